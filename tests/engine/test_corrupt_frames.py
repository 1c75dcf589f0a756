"""A frame FFmpeg flags as corrupt (error-concealed) is a DecodeError naming file and frame, never pixels."""

import pathlib

import av
import numpy as np
import pytest
from helpers import ringload_shm
import ringload
from ringload import DecodeError
from ringload.probe import probe
from ringload.synth import make_video

GOP = 12
SPEC = dict(width=128, height=96, fps=25, seconds=2.0, gop=GOP, bframes=2, seed=5)
KW = dict(batch_size=4, size=(32, 32), num_workers=1, sampling="strict", seed=1, timeout_s=120, task_timeout_s=60)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))


def _damage(clean, out, key_ordinal):
    """Write ``out``: ``clean`` with the P-frame after its ``key_ordinal``-th keyframe damaged;
    returns the indices of the frames PyAV flags as corrupt."""
    with av.open(str(clean)) as c:
        st = c.streams.video[0]
        packets = [(p.pos, p.size, p.is_keyframe) for p in c.demux(st) if p.size]
    # Decode order: the packet right after a keyframe is the GOP's first P-frame.
    key = [i for i, p in enumerate(packets) if p[2]][key_ordinal]
    pos, size, is_key = packets[key + 1]
    assert not is_key and pos > 0
    data = bytearray(clean.read_bytes())
    # Zeroing the second half of the slice data makes the entropy decoder fail mid-slice,
    # so FFmpeg conceals the rest of the picture and flags the frame.
    data[pos + size // 2 : pos + size] = bytes(size - size // 2)
    out.write_bytes(bytes(data))
    with av.open(str(out)) as c:
        return [i for i, f in enumerate(c.decode(video=0)) if f.is_corrupt]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """(clean path, damaged path, flagged frame indices): the second GOP's first P-frame is damaged."""
    folder = tmp_path_factory.mktemp("corrupt")
    clean = make_video(folder / "clean.mp4", **SPEC)
    bad = folder / "damaged.mp4"
    flagged = _damage(clean, bad, 1)
    return str(clean), str(bad), flagged


def test_pyav_flags_the_damaged_frame_only_in_its_gop(damaged):
    _, _, flagged = damaged
    assert flagged, "the damage no longer makes FFmpeg flag a frame: the tests below would prove nothing"
    assert all(GOP <= i < 2 * GOP for i in flagged), flagged


def test_probe_indexes_the_damaged_file_like_the_clean_one(damaged):
    clean, bad, _ = damaged
    a, b = probe(clean), probe(bad)
    assert b.num_frames == a.num_frames
    assert np.array_equal(b.pts, a.pts)
    assert np.array_equal(b.keyframes, a.keyframes)


def test_probe_indexes_a_flagged_frame_in_the_last_gop(damaged, tmp_path):
    # The index decodes the last GOP through the reader: a concealed frame there is counted.
    clean, _, _ = damaged
    bad = tmp_path / "last_gop.mp4"
    flagged = _damage(pathlib.Path(clean), bad, -1)
    a, b = probe(clean), probe(bad)
    assert flagged and all(i > int(a.keyframes[-1]) for i in flagged), flagged
    assert b.num_frames == a.num_frames and np.array_equal(b.pts, a.pts)
    idx = [0, int(a.keyframes[-1])]
    assert np.array_equal(ringload.read_frames(bad, idx).data.numpy(), ringload.read_frames(clean, idx).data.numpy())


def test_read_frames_of_a_flagged_frame_raises_naming_file_and_frame(damaged):
    _, bad, flagged = damaged
    for f in flagged:
        for indices in ([f], [0, f, 3 * GOP + 1]):
            with pytest.raises(DecodeError) as exc:
                ringload.read_frames(bad, indices)
            assert exc.value.path == bad and bad in str(exc.value)
            assert f"frame {f} " in str(exc.value) and "corrupt" in str(exc.value)


def test_clean_frames_of_other_gops_still_read(damaged):
    clean, bad, _ = damaged
    idx = [0, 5, GOP - 1, 2 * GOP, 3 * GOP + 4, 49]
    assert np.array_equal(ringload.read_frames(bad, idx).data.numpy(), ringload.read_frames(clean, idx).data.numpy())


def test_loader_raise_stops_at_the_flagged_frame(damaged):
    clean, bad, _ = damaged
    with ringload.VideoLoader([clean, bad], **KW) as loader:
        with pytest.raises(DecodeError) as exc:
            for _ in loader:
                pass
    assert exc.value.path == bad and "corrupt" in str(exc.value)
    assert ringload_shm() == []


def test_loader_skip_never_delivers_a_flagged_frame(damaged):
    clean, bad, flagged = damaged
    with ringload.VideoLoader([clean, bad], on_error="skip", **KW) as loader:
        n = len(loader)
        pairs = []
        for b in loader:
            pairs.extend(zip(b.video_index.tolist(), b.frame_index.tolist()))
        stats = loader.stats()
    assert len(pairs) == n * KW["batch_size"]
    assert not {(1, f) for f in flagged} & set(pairs)
    # Only the flagged frames are lost: the rest of the damaged file is still used.
    assert sum(v == 1 for v, _ in pairs) >= probe(bad).num_frames - len(flagged) - KW["batch_size"]
    assert "corrupt" in stats["quarantined"][bad]
    assert ringload_shm() == []


def test_only_flagged_frames_are_refused_and_the_reader_stays_usable(damaged):
    # What FFmpeg flags bounds what can be refused: a frame predicted from the damaged one
    # carries the damage unflagged (documented in VideoReader; this fails if that changes).
    from ringload._decode import VideoReader

    clean, bad, flagged = damaged
    f = flagged[0]
    after = f + 1
    assert after not in flagged and after < 2 * GOP
    got = {}
    with VideoReader(bad, probe(bad)) as reader:
        with pytest.raises(DecodeError, match=f"frame {f} is corrupt"):
            reader.decode([f], lambda pos, frame: None)
        reader.decode([after], lambda pos, frame: got.update(frame=frame))
        assert not got["frame"].is_corrupt
        bad_rgb = got["frame"].to_ndarray(format="rgb24")
    with VideoReader(bad, probe(bad), allow_corrupt=True) as reader:
        reader.decode([f], lambda pos, frame: got.update(flagged=frame))
    assert got["flagged"].is_corrupt
    ref = ringload.read_frames(clean, [after]).data.numpy()[0].transpose(1, 2, 0)
    assert not np.array_equal(bad_rgb, ref)
