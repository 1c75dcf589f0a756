"""Files that decode fewer frames than their container claims: indexed with the frames that
decode, recorded in the index (``VideoInfo.container_frames``), warned about once when indexed
and reported by :func:`ringload.probe.short_files_warning` whenever asked, cached or not.
Also the index's codec / decoder names and its exact frame rate."""

import json
import logging
from fractions import Fraction

import av
import pytest

from ringload.probe import CACHE_FORMAT, fps_fraction, probe, short_files_warning


def _decodable(path) -> int:
    n = 0
    with av.open(str(path)) as c:
        try:
            for _ in c.decode(c.streams.video[0]):
                n += 1
        except av.FFmpegError:
            pass
    return n


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, videos_dir):
    """carphone_pristine.mp4 (120 frames, header says 120) with the NAL length of its 34th
    packet overwritten: the decoder gives up there, the header still says 120."""
    src = videos_dir / "carphone_pristine.mp4"
    with av.open(str(src)) as c:
        positions = [p.pos for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(src.read_bytes())
    data[positions[33] : positions[33] + 4] = b"\xff\xff\xff\xff"
    path = tmp_path_factory.mktemp("damaged") / "carphone_damaged.mp4"
    path.write_bytes(bytes(data))
    n = _decodable(path)
    assert 0 < n < 120, n
    return path, n


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "ringload._index_build"]


@pytest.mark.parametrize("which", ["damaged", "decord"])
def test_short_file_is_indexed_warned_once_and_recorded(which, damaged, videos_dir, tmp_path, caplog):
    if which == "damaged":
        path, n = damaged
        claimed = 120
    else:
        path, n, claimed = videos_dir / "decord_corrupted.mp4", 28, 50
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="ringload._index_build")
    cold = probe(path, cache=cache)
    assert (cold.num_frames, cold.container_frames) == (n, claimed)
    (warning,) = _warnings(caplog)
    assert str(path) in warning and f"{n} of the {claimed} frames its container claims" in warning
    caplog.clear()
    warm = probe(path, cache=cache)  # from the cache: no second warning, same record
    assert (warm.num_frames, warm.container_frames) == (n, claimed)
    assert _warnings(caplog) == []
    msg = short_files_warning([warm])
    assert msg is not None and f"{path} ({n} of {claimed})" in msg and "1 video decodes fewer" in msg


@pytest.mark.parametrize(
    ("name", "claimed"),
    [
        ("bikes.mp4", 250),
        ("flipping_a_pancake.mkv", -1),  # Matroska has no frame count: unknown
        # 5 in the header, one of them discarded by the edit list: the container presents 4, and 4 decode.
        ("dolbyVision-hdr.MOV", 4),
    ],
)
def test_container_frames_of_whole_files(name, claimed, videos_dir, tmp_path):
    info = probe(videos_dir / name, cache=tmp_path / "c")
    assert info.container_frames == claimed
    assert short_files_warning([info]) is None


def test_short_files_warning_lists_each_file_with_counts(damaged, videos_dir, tmp_path):
    cache = tmp_path / "c"
    good = probe(videos_dir / "bikes.mp4", cache=cache)
    bad = [probe(videos_dir / "decord_corrupted.mp4", cache=cache), probe(damaged[0], cache=cache)]
    assert short_files_warning([good, None]) is None  # None: a file the loader could not index
    msg = short_files_warning([good, bad[0], None, bad[1]])
    assert msg.startswith("2 videos decode fewer frames than their containers claim")
    assert f"{bad[0].path} (28 of 50)" in msg and f"{bad[1].path} ({damaged[1]} of 120)" in msg
    assert good.path not in msg
    short = short_files_warning([good, *bad], limit=1)
    assert f"{bad[0].path} (28 of 50)" in short and bad[1].path not in short and "and 1 more" in short


def test_codec_and_decoder_are_named_separately(videos_dir, tmp_path):
    av1 = probe(videos_dir / "sample_av1.mp4", cache=tmp_path / "c")
    assert av1.codec == "av1"
    with av.open(str(videos_dir / "sample_av1.mp4")) as c:
        assert av1.decoder == c.streams.video[0].codec_context.name
    h264 = probe(videos_dir / "bikes.mp4", cache=tmp_path / "c")
    assert (h264.codec, h264.decoder) == ("h264", "h264")


@pytest.mark.parametrize(
    ("name", "exact"),
    [
        ("bikes.mp4", Fraction(25)),  # was 24.999999999999996
        ("carphone_pristine.mp4", Fraction(30000, 1001)),
        ("sample_with_increasing_timestamps_320w_240h.mp4", Fraction(60)),
        ("flipping_a_pancake.mkv", Fraction(30)),
    ],
)
def test_fps_is_the_exact_average_of_the_timestamps(name, exact, videos_dir, tmp_path):
    info = probe(videos_dir / name, cache=tmp_path / "c")
    assert fps_fraction(info) == exact
    assert info.fps == float(exact)
    span = Fraction(int(info.pts[-1] - info.pts[0])) * info.time_base
    assert fps_fraction(info) == (info.num_frames - 1) / span


def test_cache_entry_carries_the_new_fields(damaged, tmp_path):
    cache = tmp_path / "c"
    info = probe(damaged[0], cache=cache)
    (entry,) = [p for p in cache.rglob("*.json")]
    d = json.loads(entry.read_text())
    assert d["format"] == CACHE_FORMAT >= 3
    assert (d["container_frames"], d["decoder"], d["codec"]) == (120, info.decoder, "h264")



def test_the_loader_reports_short_files_every_time_it_is_built(videos_dir, tmp_path, monkeypatch, caplog):
    import ringload

    monkeypatch.setenv("RINGLOAD_CACHE_DIR", str(tmp_path / "cache"))
    paths = [str(videos_dir / "decord_corrupted.mp4"), str(videos_dir / "carphone_pristine.mp4")]
    for _ in range(2):  # cold cache, then warm: reported both times
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ringload"):
            with ringload.VideoLoader(paths, batch_size=4, size=(16, 16), num_workers=1):
                pass
        lines = [r.getMessage() for r in caplog.records if r.name == "ringload._dataset"]
        assert any("decord_corrupted.mp4 (28 of 50)" in m for m in lines), lines
