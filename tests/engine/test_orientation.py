"""Orientation: the index keeps each file's display matrix, and orientation="display" (the
default) delivers frames the way a video player shows them, in read_frames and VideoLoader alike."""

import shutil

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type
from hypothesis import given
from hypothesis import strategies as hst
from helpers import assert_same_batches, check_exact, collect

import ringload
from ringload import ConfigError
from ringload._config import LoaderConfig
from ringload._samples import Sampler as _Sampler
from ringload.probe import probe

# The files of ../shared/videos with a display matrix: FFmpeg's angle (frame.rotation,
# counter-clockwise, av_display_rotation_get) and the transform that shows them, as
# (counter-clockwise quarter turns in degrees, then a left-right mirror). The mapping was
# checked against an independent player, FFmpeg 9.0.2's command line, whose default
# autorotation is what players show: `ffmpeg -i F -frames:v 1 -f rawvideo -pix_fmt rgb24 -`
# equals np.rot90(coded, k)[, mirrored] bit for bit with these values for the three 8-bit
# files (dolbyVision, 10-bit, within 0.1 level mean), and is 33 levels or more (mean) away
# from each of the seven other transforms. test_matches_the_ffmpeg_command_line repeats that
# check wherever an ffmpeg binary is at hand.
DISPLAYED = {
    "portrait_4k60.mp4": (-90, 270, False),
    "dolbyVision-hdr.MOV": (-90, 270, False),
    "mv_with_2_top_shots.mp4": (90, 90, False),
    "sample_rotate_and_reflect.mp4": (-90, 270, True),
}



def _pyav_matrix(path):
    """The first frame's display matrix as PyAV gives it (9 int32), or None."""
    with av.open(str(path)) as c:
        frame = next(c.decode(c.streams.video[0]))
        sd = frame.side_data.get(Type.DISPLAYMATRIX)
        return None if sd is None else np.frombuffer(bytes(sd), "<i4").copy(), frame.rotation


def _shown(coded, rot, mirror):
    """numpy's view of ``coded`` (..., H, W, C) turned ``rot`` degrees counter-clockwise, then mirrored."""
    out = np.rot90(coded, rot // 90, axes=(-3, -2))
    return out[..., ::-1, :] if mirror else out


def _hwc(frames):
    return frames.data.permute(0, 2, 3, 1).numpy()


def test_the_files_with_a_display_matrix_are_known(videos_dir):
    with_matrix = set()
    for p in sorted(videos_dir.iterdir()):
        if p.suffix == ".md" or p.name == "decord_corrupted.mp4":
            continue
        m, _ = _pyav_matrix(p)
        if m is not None:
            with_matrix.add(p.name)
    assert with_matrix == set(DISPLAYED)


@pytest.mark.parametrize("name", sorted(DISPLAYED))
def test_index_keeps_the_display_matrix(name, videos_dir, tmp_path):
    path = videos_dir / name
    matrix, angle = _pyav_matrix(path)
    rotation, turn, mirror = DISPLAYED[name]
    assert angle == rotation
    # A reflection is a negative determinant of the matrix's 2x2 part (PyAV's own side data).
    a, b, c, d = (int(v) for v in matrix[[0, 1, 3, 4]])
    assert (a * d - b * c < 0) == mirror
    info = probe(path, cache=tmp_path)
    assert info.rotation == rotation  # FFmpeg's angle, as before
    assert info.display_matrix == tuple(int(v) for v in matrix)
    assert (info.display_rotation, info.display_hflip) == (turn, mirror)
    swapped = turn in (90, 270)
    assert info.size("coded") == (info.height, info.width)
    assert info.size("display") == ((info.width, info.height) if swapped else (info.height, info.width))
    # The cache entry keeps all of it.
    again = probe(path, cache=tmp_path)
    assert (again.display_matrix, again.display_rotation, again.display_hflip) == (
        info.display_matrix, info.display_rotation, info.display_hflip
    )


def test_a_file_without_a_matrix_is_shown_as_coded(videos_dir, tmp_path):
    info = probe(videos_dir / "chaplin.mp4", cache=tmp_path)
    assert (info.display_matrix, info.display_rotation, info.display_hflip, info.rotation) == (None, 0, False, 0)
    assert info.size("display") == info.size("coded") == (360, 640)


@pytest.mark.parametrize("name", sorted(DISPLAYED))
def test_read_frames_display_is_the_coded_frame_turned(name, videos_dir):
    path = videos_dir / name
    _, turn, mirror = DISPLAYED[name]
    info = probe(path)
    idx = [info.num_frames - 1, 0]
    big = info.width * info.height > 4_000_000
    if not big:  # the 4K file only resized: two full frames would be 50 MB
        coded = ringload.read_frames(path, idx, orientation="coded")
        shown = ringload.read_frames(path, idx)  # "display" is the default
        assert tuple(shown.data.shape) == (2, 3, *info.size("display"))
        assert np.array_equal(_hwc(shown), _shown(_hwc(coded), turn, mirror))
        assert np.array_equal(shown.pts_seconds.numpy(), coded.pts_seconds.numpy())
    # With a size: the crop and resize happen in coded orientation, to the turned size.
    size = (40, 24)
    coded_size = size[::-1] if turn in (90, 270) else size
    coded = ringload.read_frames(path, idx, size=coded_size, orientation="coded")
    shown = ringload.read_frames(path, idx, size=size, orientation="display")
    assert tuple(shown.data.shape) == (2, 3, *size)
    assert np.array_equal(_hwc(shown), _shown(_hwc(coded), turn, mirror))


def _ffmpeg():
    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            import imageio_ffmpeg
        except ImportError:
            return None
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


@pytest.mark.parametrize("name", ["mv_with_2_top_shots.mp4", "sample_rotate_and_reflect.mp4", "dolbyVision-hdr.MOV"])
def test_matches_the_ffmpeg_command_line(name, videos_dir):
    import subprocess

    exe = _ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg binary (PATH or imageio-ffmpeg) to compare with")
    path = videos_dir / name
    raw = subprocess.run(
        [exe, "-v", "error", "-i", str(path), "-map", "0:v:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    ours = _hwc(ringload.read_frames(path, [0]))[0]
    coded = _hwc(ringload.read_frames(path, [0], orientation="coded"))[0]
    player = np.frombuffer(raw, np.uint8).reshape(ours.shape).astype(int)
    dist = {(k, m): np.abs(player - _shown(coded, 90 * k, m)).mean() for k in range(4) for m in (False, True)
            if _shown(coded, 90 * k, m).shape == ours.shape}
    assert np.abs(player - ours).mean() == min(dist.values()) < 1.0


@given(
    w=hst.integers(1, 9), h=hst.integers(1, 9), turn=hst.sampled_from([0, 90, 180, 270]), mirror=hst.booleans(),
    data=hst.data(),
)
def test_display_boxes_map_onto_the_same_pixels_of_the_coded_frame(w, h, turn, mirror, data):
    from ringload._samples import display_to_coded_boxes

    coded = np.arange(h * w).reshape(h, w, 1)
    shown = _shown(coded, turn, mirror)
    dh, dw = shown.shape[:2]
    x = data.draw(hst.integers(0, dw - 1))
    y = data.draw(hst.integers(0, dh - 1))
    bw = data.draw(hst.integers(1, dw - x))
    bh = data.draw(hst.integers(1, dh - y))
    (cx, cy, cw, ch), = display_to_coded_boxes(np.array([[x, y, bw, bh]]), w, h, turn, mirror).tolist()
    assert 0 <= cx and cx + cw <= w and 0 <= cy and cy + ch <= h
    assert np.array_equal(_shown(coded[cy : cy + ch, cx : cx + cw], turn, mirror), shown[y : y + bh, x : x + bw])


def test_center_crop_is_chosen_on_the_displayed_frame(videos_dir):
    path = videos_dir / "portrait_4k60.mp4"  # coded 3840x2160 landscape, shown 2160x3840 portrait
    info = probe(path)
    size = (64, 24)  # a tall output: the centre box is 1440 wide and 3840 tall as shown
    cfg = LoaderConfig(size=size, crop="center", sampling="sequential")
    counts = np.array([info.num_frames])
    boxes = _Sampler(cfg, [info], counts, None, 0).crops(np.array([0]), np.zeros((1, 2), np.uint64))
    # ... which is a horizontal band of the coded frame: its full width, 1440 rows in the middle.
    assert boxes.tolist() == [[0, 360, 3840, 1440]]
    coded_cfg = LoaderConfig(size=size, crop="center", sampling="sequential", orientation="coded")
    boxes = _Sampler(coded_cfg, [info], counts, None, 0).crops(np.array([0]), np.zeros((1, 2), np.uint64))
    assert boxes.tolist() == [[1514, 0, 810, 2160]]  # coded: a vertical band, as before
    with ringload.VideoLoader([path], batch_size=2, size=size, crop="center", sampling="sequential", num_workers=1) as loader:
        batch = next(iter(loader))
        frames = batch.frames.permute(0, 2, 3, 1).numpy()
        index = batch.frame_index.tolist()
    assert frames.shape == (2, 64, 24, 3)
    # Independent of the decoder's path: the full coded frame turned by numpy, cut as shown,
    # resized from RGB (so only close, not equal: the decoder resizes from YUV).
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(c.streams.video[0])):
            if i == index[0]:
                break
    shown = np.ascontiguousarray(_shown(frame.to_ndarray(format="rgb24"), 270, False)[:, 360:1800])
    ref = av.VideoFrame.from_ndarray(shown, format="rgb24").to_ndarray(
        format="rgb24", width=24, height=64, interpolation="AREA"
    )
    assert np.abs(frames[0].astype(int) - ref).mean() < 2.0


MIXED = ["sample_rotate_and_reflect.mp4", "mv_with_2_top_shots.mp4", "chaplin.mp4"]


@pytest.mark.parametrize("orientation", ["display", "coded"])
def test_loader_batches_equal_read_frames(orientation, videos_dir):
    paths = [str(videos_dir / n) for n in MIXED]
    size = (40, 24)
    with ringload.VideoLoader(paths, batch_size=8, size=size, crop="none", sampling="strict", num_workers=2, seed=2,
                              orientation=orientation) as loader:
        batches = collect(loader, limit=4)
    assert batches[0]["frames"].shape == (8, 3, 40, 24)
    assert check_exact(batches, paths, size, orientation=orientation) == 32


def test_the_augmentation_flip_mirrors_the_displayed_frame(videos_dir):
    # The same samples and flip draws in both settings; coded at the turned size. A sample
    # drawn unflipped is the coded one turned; a flipped one is mirrored after the turn.
    path = str(videos_dir / "sample_rotate_and_reflect.mp4")
    kw = dict(batch_size=8, crop="none", hflip=True, sampling="strict", num_workers=1, seed=4)
    with ringload.VideoLoader([path], size=(40, 24), **kw) as shown:
        a = collect(shown, limit=2)
    with ringload.VideoLoader([path], size=(24, 40), orientation="coded", **kw) as coded:
        b = collect(coded, limit=2)
    kinds = []
    for x, y in zip(a, b):
        assert np.array_equal(x["frame"], y["frame"])
        for s, c in zip(x["frames"].transpose(0, 2, 3, 1), y["frames"].transpose(0, 2, 3, 1)):
            plain = np.array_equal(s, _shown(c, 270, True))
            flipped = np.array_equal(s, _shown(c[:, ::-1], 270, True)[:, ::-1])
            assert plain != flipped
            kinds.append(flipped)
    assert 0 < sum(kinds) < len(kinds)


def test_size_none_uses_the_displayed_size(videos_dir):
    path = str(videos_dir / "sample_rotate_and_reflect.mp4")  # coded 1080x720, shown 720x1080
    with ringload.VideoLoader([path], batch_size=2, size=None, crop="none", sampling="sequential", num_workers=1) as loader:
        batch = next(iter(loader))
        assert tuple(batch.frames.shape) == (2, 3, 1080, 720)
        frames = batch.frames.contiguous().numpy()
    ref = ringload.read_frames(path, batch.frame_index.tolist()).data.numpy()
    assert np.array_equal(frames, ref)


def test_rotation_0_gives_the_same_batches_either_way(engine_videos):
    kw = dict(batch_size=8, size=(32, 40), crop="random_resized", scale=(0.3, 1.0), hflip=True, num_workers=2, seed=9)
    with ringload.VideoLoader(engine_videos, **kw) as shown:
        a = collect(shown, limit=3)
    with ringload.VideoLoader(engine_videos, **kw, orientation="coded") as coded:
        b = collect(coded, limit=3)
    assert_same_batches(a, b)


def test_orientation_is_part_of_the_resume_fingerprint(engine_videos):
    kw = dict(batch_size=8, size=(32, 40), num_workers=1)
    with ringload.VideoLoader(engine_videos, **kw) as shown:
        state = shown.state_dict()
    with ringload.VideoLoader(engine_videos, **kw, orientation="coded") as coded:
        with pytest.raises(ConfigError, match="other settings"):
            coded.load_state_dict(state)


@pytest.mark.parametrize("bad", ["rotated", "", None, 90, "Display"])
def test_invalid_orientation_names_the_setting(bad, videos_dir):
    with pytest.raises(ConfigError, match="orientation"):
        ringload.VideoLoader([str(videos_dir / "chaplin.mp4")], orientation=bad)
    with pytest.raises(ConfigError, match="orientation"):
        ringload.read_frames(videos_dir / "chaplin.mp4", [0], orientation=bad)
