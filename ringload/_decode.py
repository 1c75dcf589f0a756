"""The decoder core: exact frame access by index (``VideoReader``) and RGB conversion (``convert_into``).

Used by ``read_frames`` and by the loader's decoder processes. A frame is identified by
its timestamp under the rule the index recorded (``VideoInfo.timestamps``), never by
counting after a seek, so a demuxer that lands somewhere other than asked is detected
and corrected rather than trusted.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np

from . import _remote
from ._videoinfo import TS_COUNT, TS_PTS, VideoInfo, frame_timestamp
from .errors import (
    ConfigError,
    DecodeError,
    FrameIndexError,
    VideoChangedError,
    VideoOpenError,
)

log = logging.getLogger(__name__)

# Decoding this many frames past the current position costs about as much as one seek
# (flush + demuxer seek + refilling the decoder's reorder buffer), so requests closer
# than this continue forward instead of seeking.
SEEK_COST_FRAMES = 8

# Bytes fetched past a run of GOPs with it: packets the decoder reads beyond the next
# keyframe before the run's last frame comes out of its reorder buffer.
_PREFETCH_TAIL = 64 << 10

# How many earlier keyframes to try when a seek lands after the keyframe asked for,
# before decoding from the start.
_MAX_STEP_BACK = 3

_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video"})

# The one interpolation used for every resize. swscale's AREA averages the source pixels
# each output pixel covers when shrinking (no aliasing, like OpenCV's INTER_AREA) and is
# bilinear when enlarging; it measured faster than swscale's BILINEAR for 1080p -> 224
# (docs/indexing.md, bench/index_speed.py --convert).
INTERPOLATION = "AREA"


class _Late(Exception):
    """The seek landed after the frame it had to reach."""


class VideoReader:
    """Exact random access to the frames of one video stream, described by ``info``.

    ``decode(indices, sink)`` calls ``sink(position, frame)`` once for every position of
    ``indices``; ``decoded_frames`` counts every frame the decoder produced. The file
    stays open between calls so that a request just ahead of the last one continues
    without a seek. ``threads`` is FFmpeg's thread count (1: one core, the right choice
    for a process that is one of several decoders; 0: FFmpeg picks). A file whose size
    or mtime differs from ``info``'s raises :class:`VideoChangedError`, checked on open
    and at every ``decode`` call. A requested frame that FFmpeg flags as corrupt raises
    :class:`DecodeError` unless ``allow_corrupt`` (indexing counts such frames; training
    must never see them).
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo, *, threads: int = 1, skip_nonref: bool = True,
                 allow_corrupt: bool = False):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ConfigError(f"VideoReader(threads={threads!r}): pass an int >= 0 (0 lets FFmpeg choose)")
        self.path = os.fspath(path)
        self.info = info
        self.threads = threads
        self.allow_corrupt = bool(allow_corrupt)
        self.decoded_frames = 0
        self._container = None
        self._fd = None  # descriptor of the file that was checked against info; FFmpeg reads it
        self._file = None  # the file object FFmpeg reads a remote object or a shard's member through
        self.gop_bytes = 0  # bytes of the GOPs that decode calls asked for (where their positions are known)
        self._stream = None
        self._frames = None  # live frame generator of the current decode position
        self._last = None  # index of the last frame identified since the last seek
        self._fresh = False  # container just opened: decoding starts at the first frame
        self._count = 0  # frames output since the start (TS_COUNT streams only)
        self._seek_kf = 0  # the keyframe the last seek aimed at
        # Timestamps are strictly increasing, so a binary search maps one to its frame
        # without building a table per reader (long videos, one reader per task).
        self._pts = info.pts if info.timestamps != TS_COUNT else None
        self._kf = [int(k) for k in info.keyframes]
        # Skipping non-reference frames is exact only where a packet's pts is its frame's
        # pts and the codec marks reference use per frame (see docs/indexing.md).
        self.skip_nonref = bool(skip_nonref) and info.timestamps == TS_PTS and info.codec in _NONREF_CODECS
        self._walk_ts = None  # timestamp of the frame being walked to, while skipping is allowed

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._frames = None
        try:
            if self._container is not None:
                try:
                    self._container.close()
                finally:
                    self._container = None
                    self._stream = None
        finally:
            if self._file is not None:
                f, self._file = self._file, None
                f.close()
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open(self) -> None:
        import av

        self.close()
        if not _remote.is_local(self.path):
            self._open_object()
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise VideoOpenError(self.path, "no such file (it was indexed: moved or deleted since?)") from None
            except OSError as exc:
                raise VideoOpenError(self.path, f"cannot open: {exc.strerror or exc}") from None
            self._fd = fd
        try:
            self._check_unchanged()
            try:
                # FFmpeg opens the very file checked above, whatever the path names by now.
                self._container = av.open(self._file if self._file is not None else _fd_path(self._fd), "r")
            except av.FFmpegError as exc:
                raise VideoOpenError(self.path, f"FFmpeg cannot open it: {exc.strerror or exc}") from None
            except OSError as exc:
                raise VideoOpenError(self.path, f"cannot open: {exc.strerror or exc}") from None
            if self._file is not None:
                self._file.end_header()
            streams = list(self._container.streams)
            if self.info.stream >= len(streams) or streams[self.info.stream].type != "video":
                raise VideoOpenError(self.path, f"stream {self.info.stream} is no longer a video stream; re-index the file")
        except BaseException:
            self.close()
            raise
        st = streams[self.info.stream]
        cc = st.codec_context
        cc.thread_type = "SLICE" if self.threads == 1 else "AUTO"
        cc.thread_count = self.threads
        self._stream = st
        self._fresh = True
        self._last = None
        self._count = 0
        self._frames = self._generate()

    def _open_object(self) -> None:
        """Open a remote object or a shard's member (checked against the index) as a file object."""
        self._file, self._fd = _remote.current().open_indexed(self.path, **_remote.location(self.info))

    def _prefetch(self, targets: list[int]) -> None:
        """Fetch the bytes of the GOPs holding ``targets`` in one request per run of GOPs."""
        f = self._file
        if f is None or getattr(f, "local", True):
            return
        self.gop_bytes += prefetch_gops(f, self.info, targets)

    def _check_unchanged(self) -> None:
        """Raise VideoChangedError (closing the reader) when the open file is not the indexed one."""
        info = self.info
        if self._fd is None or (info.file_size < 0 and info.file_mtime_ns < 0):
            return
        try:
            _remote.check_file(self.path, os.fstat(self._fd), info.file_size, info.file_mtime_ns)
        except VideoChangedError:
            self.close()
            raise

    def _generate(self):
        import av

        st = self._stream
        cc = st.codec_context
        skipping = False
        for packet in self._container.demux(st):
            # While walking to a target, frames nobody references and nobody asked for
            # need not be decoded at all; the target's own packet and every packet after
            # it are decoded normally.
            walk = self._walk_ts
            if walk is not None and packet.pts is not None and packet.pts < walk:
                if not skipping:
                    cc.skip_frame = "NONREF"
                    skipping = True
            elif skipping:
                cc.skip_frame = "DEFAULT"
                skipping = False
            try:
                frames = cc.decode(packet)
            except av.FFmpegError as exc:
                raise _DecodeFailed(str(exc)) from None
            yield from frames

    # ------------------------------------------------------------------ positioning

    def _rewind(self) -> None:
        self._open()

    def _seek(self, kf_pos: int) -> None:
        """Position the decoder at the keyframe ``self._kf[kf_pos]`` (or the start)."""
        if kf_pos < 0 or self.info.timestamps == TS_COUNT:
            self._rewind()
            return
        k = self._kf[kf_pos]
        if k == 0:
            self._rewind()
            return
        if self._container is None:
            self._open()
        ts = int(self.info.pts[k])
        self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)
        self._stream.codec_context.flush_buffers()
        self._frames = self._generate()
        self._fresh = False
        self._last = None
        self._seek_kf = k

    def _index_of(self, frame) -> int | None:
        if self._pts is None:
            return self._count
        ts = frame_timestamp(frame, self.info.timestamps)
        if ts is None:
            # The index filled the gap with the next position (see probe._fill).
            if self._last is not None:
                return self._last + 1
            return 0 if self._fresh else None
        ts = int(ts)
        j = int(np.searchsorted(self._pts, ts))
        return j if j < len(self._pts) and int(self._pts[j]) == ts else None

    def _next_frame(self):
        """(index or None, frame) of the next decoded frame, or None at the end."""
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        j = self._index_of(frame)
        self._count += 1
        self.decoded_frames += 1
        return j, frame

    # ------------------------------------------------------------------ decoding

    def decode(self, indices: Iterable[int], sink: Callable[[int, object], None]) -> None:
        """Call ``sink(position, frame)`` for every position of ``indices`` (any order, repeats allowed)."""
        idx = as_indices(indices, self.path)
        n = self.info.num_frames
        if idx.size == 0:
            return
        # An in-place rewrite keeps the inode (and this descriptor) but not size/mtime.
        self._check_unchanged()
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise FrameIndexError(self.path, f"frame {int(bad[0])} is out of range: {n} frames decode (0..{n - 1})")
        wanted: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            wanted.setdefault(i, []).append(pos)
        targets = sorted(wanted)
        try:
            if self._container is None and self._file is None and not _remote.is_local(self.path):
                self._open()
            self._prefetch(targets)
            self._decode_sorted(targets, wanted, sink)
        except _Corrupt as exc:
            # The decoder itself is fine and stands just past the frame: the reader stays usable.
            raise DecodeError(
                self.path,
                f"frame {exc.frame} is corrupt: FFmpeg found damaged data in it and concealed the damage "
                "(its pixels are not the video's)",
                hint="re-encode or replace the file; with on_error='skip' the loader replaces the samples that use it",
            ) from None
        except _DecodeFailed as exc:
            self.close()
            pending = min(wanted) if wanted else targets[-1]
            raise DecodeError(self.path, f"frame {pending} does not decode: {exc}") from None
        except BaseException:
            # The decoder is mid-stream in an unknown state: start clean next time.
            self.close()
            raise

    def _kf_pos(self, t: int) -> int:
        """Position in the keyframe list of the keyframe at or before frame ``t`` (-1: the start)."""
        return bisect.bisect_right(self._kf, t) - 1

    def _decode_sorted(self, targets: list[int], wanted: dict[int, list[int]], sink) -> None:
        ti = 0
        while ti < len(targets):
            t = targets[ti]
            if t not in wanted:
                ti += 1
                continue
            kp = self._kf_pos(t)
            k = self._kf[kp] if kp >= 0 else 0
            cont = (
                self._frames is not None
                and ((self._last is not None and self._last < t and k <= self._last + SEEK_COST_FRAMES)
                     or (self._fresh and self._last is None and (kp < 0 or k <= SEEK_COST_FRAMES)))
            )
            if self._frames is None:
                self._open()
                cont = kp < 0 or k <= SEEK_COST_FRAMES
            if not cont:
                self._seek(kp)
            step_back = 0
            while True:
                try:
                    self._run_to(t, wanted, sink)
                    break
                except _Late:
                    step_back += 1
                    if kp - step_back < 0 or step_back > _MAX_STEP_BACK:
                        log.debug("%s: seeks land late; decoding from the start to reach frame %d", self.path, t)
                        self._rewind()
                        kp = -1
                        step_back = 0
                    else:
                        self._seek(kp - step_back)
            ti += 1

    def _run_to(self, t: int, wanted: dict[int, list[int]], sink) -> None:
        """Decode forward until frame ``t`` is delivered, delivering wanted frames on the way."""
        # t is the smallest frame still wanted, so nothing before it needs decoding unless referenced.
        self._walk_ts = int(self.info.pts[t]) if self.skip_nonref else None
        try:
            self._run_to_inner(t, wanted, sink)
        finally:
            self._walk_ts = None

    def _run_to_inner(self, t: int, wanted: dict[int, list[int]], sink) -> None:
        while True:
            nxt = self._next_frame()
            if nxt is None:
                self._frames = None
                if self._last is None and not self._fresh:
                    raise _Late()
                raise _DecodeFailed("the stream ended before it")
            j, frame = nxt
            if j is None:
                if self._last is None and not self._fresh:
                    continue  # after a seek, before the first frame we can identify
                raise _DecodeFailed(
                    f"a decoded frame has timestamp {frame_timestamp(frame, self.info.timestamps)} that the index "
                    "does not list (the file changed or the index is stale; delete the cache entry)"
                )
            if self._last is None:
                if self._fresh:
                    if j > t:
                        raise _DecodeFailed("decoding from the start skips it")
                elif j > self._seek_kf:
                    # The demuxer landed after the keyframe: frames from there on may lack
                    # their references, so none of them is trusted.
                    raise _Late()
            elif j <= self._last:
                raise _DecodeFailed(f"frames come out of order after frame {self._last}")
            if self._last is not None and j > t:
                raise _DecodeFailed(f"the decoder skipped from frame {self._last} to frame {j}")
            self._last = j
            positions = wanted.pop(j, None)
            if positions is not None:
                # FFmpeg flags (AV_FRAME_FLAG_CORRUPT, decode_error_flags) only a frame in
                # which the decoder itself detected damage and concealed it: measured with
                # libavcodec 62 on H.264, frames predicted from it (the rest of its GOP, the
                # B-frames referencing it) carry the damage unflagged, and damage that still
                # parses is not flagged at all. Concealed pixels (and those predicted from them)
                # also depend on what the decoder decoded before (a seek vs a continued
                # decode). So every flagged frame is refused here, but an unflagged frame is
                # not proven intact.
                if frame.is_corrupt and not self.allow_corrupt:
                    raise _Corrupt(j)
                for pos in positions:
                    sink(pos, frame)
            if j == t:
                return

    def drain(self) -> int:
        """Decode to the end of the stream; returns how many frames came out (for index checks)."""
        extra = 0
        try:
            while self._frames is not None:
                nxt = self._next_frame()
                if nxt is None:
                    break
                extra += 1
        except _DecodeFailed as exc:
            self.close()
            raise DecodeError(self.path, f"decoding past frame {self._last} fails: {exc}") from None
        self._frames = None
        return extra


class _DecodeFailed(Exception):
    pass


class _Corrupt(Exception):
    """A requested frame came out flagged as corrupt."""

    def __init__(self, frame: int):
        super().__init__(frame)
        self.frame = frame


def gop_ranges(info: VideoInfo, targets, size: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of the runs of consecutive GOPs that hold frames ``targets``
    in a file of ``size`` bytes; [] where the index does not know the keyframes' positions.
    The decoder reads a little past each end (``_PREFETCH_TAIL``): packets it reorders."""
    pos = info.keyframe_pos
    if len(pos) == 0 or bool(np.any(pos < 0)) or len(targets) == 0:
        return []
    gops = np.unique(np.maximum(np.searchsorted(info.keyframes, np.asarray(targets), side="right") - 1, 0))
    # A new run starts wherever the next GOP is not the one after the previous.
    breaks = np.flatnonzero(np.diff(gops) != 1) + 1
    ranges = []
    for run in np.split(gops, breaks):
        a, b = int(run[0]), int(run[-1])
        start = int(pos[a]) if a > 0 else 0
        end = int(pos[b + 1]) if b + 1 < len(pos) else size
        if end > start:
            ranges.append((start, end))
    return ranges


def prefetch_gops(f, info: VideoInfo, targets) -> int:
    """Prefetch into RangeFile ``f`` the GOP runs that hold ``targets``, each with its tail;
    returns the GOPs' bytes (without the tails)."""
    total = 0
    for start, end in gop_ranges(info, targets, f.size):
        total += end - start
        f.prefetch(start, min(f.size, end + _PREFETCH_TAIL))
    return total


def _fd_path(fd: int) -> str:
    """A path that opens the file behind descriptor ``fd`` (Linux; /dev/fd elsewhere)."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


def as_indices(indices, path) -> np.ndarray:
    """Frame indices as a flat int64 array; floats must be whole numbers."""
    if isinstance(indices, range):
        return np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    arr = np.asarray(indices if hasattr(indices, "__len__") or hasattr(indices, "__array__") else list(indices))
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"frame indices for {os.fspath(path)} must be integers, got {arr.dtype} values")
    return arr.astype(np.int64, copy=False).ravel()


# ---------------------------------------------------------------------- conversion


def _interp():
    from av.video.reformatter import Interpolation

    return getattr(Interpolation, INTERPOLATION)


def orient_view(arr: np.ndarray, rotation: int, hflip: bool) -> np.ndarray:
    """View of the (H, W, ...) image ``arr`` turned ``rotation`` degrees counter-clockwise, then mirrored."""
    # np.rot90 turns from the first axis towards the second: counter-clockwise on screen
    # for rows-down images, the direction FFmpeg's angles count in.
    out = np.rot90(arr, rotation // 90) if rotation else arr
    return out[:, ::-1] if hflip else out


def convert_into(frame, out: np.ndarray, *, crop: tuple[int, int, int, int] | None = None,
                 size: tuple[int, int] | None = None, orient: tuple[int, bool] = (0, False)) -> None:
    """Write ``frame`` as RGB24 (H, W, 3) uint8 into ``out``.

    ``crop=(x, y, w, h)`` in coded pixels is applied before the resize to ``size=(h, w)``;
    without ``size`` the output has the crop's (or the frame's) size. ``orient=(rotation,
    hflip)`` (``VideoInfo.orient``) then turns the result counter-clockwise and mirrors it:
    ``size`` and ``out`` are as delivered, the resize happens in coded orientation to the
    turned size. With none of them, the pixels equal ``frame.to_ndarray(format="rgb24")``.
    """
    rotation, hflip = int(orient[0]), bool(orient[1])
    if rotation not in (0, 90, 180, 270):
        raise ConfigError(f"convert_into(orient={orient!r}): the rotation must be 0, 90, 180 or 270")
    turned = rotation in (90, 270)
    if size is not None and turned:
        size = (int(size[1]), int(size[0]))
    if rotation == 0 and not hflip:
        _convert(frame, out, crop, size)
        return
    fw, fh = frame.width, frame.height
    ch, cw = size if size is not None else ((crop[3], crop[2]) if crop is not None else (fh, fw))
    want = (int(cw), int(ch), 3) if turned else (int(ch), int(cw), 3)
    if out.shape != want or out.dtype != np.uint8:
        raise ConfigError(f"convert_into: out has shape {out.shape} {out.dtype}, needs {want} uint8")
    coded = np.empty((int(ch), int(cw), 3), np.uint8)
    _convert(frame, coded, crop, size)
    out[...] = orient_view(coded, rotation, hflip)


def _convert(frame, out: np.ndarray, crop, size) -> None:
    """convert_into in coded orientation."""
    fw, fh = frame.width, frame.height
    if crop is not None:
        x, y, cw, ch = (int(v) for v in crop)
        if cw <= 0 or ch <= 0 or x < 0 or y < 0 or x + cw > fw or y + ch > fh:
            raise ConfigError(f"crop={crop!r} does not fit in the {fw}x{fh} frame")
        if (x, y, cw, ch) == (0, 0, fw, fh):
            crop = None
    else:
        x, y, cw, ch = 0, 0, fw, fh
    oh, ow = (int(size[0]), int(size[1])) if size is not None else (ch, cw)
    if out.shape != (oh, ow, 3) or out.dtype != np.uint8:
        raise ConfigError(f"convert_into: out has shape {out.shape} {out.dtype}, needs ({oh}, {ow}, 3) uint8")
    src = frame if crop is None else _crop_frame(frame, x, y, cw, ch)
    if src is None:
        # The crop does not align with the chroma grid: convert the whole frame, crop in RGB.
        import av

        rgb = frame.to_ndarray(format="rgb24")[y : y + ch, x : x + cw]
        if (oh, ow) == (ch, cw):
            out[...] = rgb
            return
        src = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    if (oh, ow) == (src.height, src.width):
        arr = src.to_ndarray(format="rgb24")
    else:
        arr = src.to_ndarray(format="rgb24", width=ow, height=oh, interpolation=_interp())
    out[...] = arr


def _shift(full: int, part: int) -> int | None:
    for s in range(3):
        if -(-full >> s) == part:
            return s
    return None


def _crop_frame(frame, x: int, y: int, w: int, h: int):
    """A new frame holding the crop, copied plane by plane.

    Only for planar formats with one component per plane (yuv4xxp in 8 to 16 bits, gray,
    gbrp...); None for other formats and for boxes that split a chroma sample, where the
    caller crops in RGB instead.
    """
    import av

    fmt = frame.format
    comps = fmt.components
    planes = frame.planes
    if len(comps) != len(planes) or sorted(c.plane for c in comps) != list(range(len(planes))):
        return None
    bits = max(c.bits for c in comps)
    # Deeper formats are dithered/rounded near the crop edges differently than in the
    # full conversion (measured: up to 3 levels in the outer pixels), so they crop in RGB.
    if bits != 8 or getattr(fmt, "is_bayer", False):
        return None
    bps = 1
    shifts = []
    for p in planes:
        sx, sy = _shift(frame.width, p.width), _shift(frame.height, p.height)
        if sx is None or sy is None:
            return None
        ax, ay = 1 << sx, 1 << sy
        # swscale converts odd-sized subsampled frames on a path that interpolates chroma,
        # so a plane crop of them would not match the full conversion: crop in RGB instead.
        if frame.width % ax or frame.height % ay:
            return None
        if x % ax or y % ay or (w % ax and x + w != frame.width) or (h % ay and y + h != frame.height):
            return None
        shifts.append((sx, sy))
    out = av.VideoFrame(w, h, fmt.name)
    for sp, dp, (sx, sy) in zip(planes, out.planes, shifts):
        pw, ph = dp.width, dp.height
        src = np.frombuffer(sp, np.uint8).reshape(-1, sp.line_size)
        dst = np.frombuffer(dp, np.uint8).reshape(-1, dp.line_size)
        px, py = (x >> sx) * bps, y >> sy
        dst[:ph, : pw * bps] = src[py : py + ph, px : px + pw * bps]
    for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
        try:
            setattr(out, attr, getattr(frame, attr))
        except (AttributeError, TypeError, ValueError):
            pass
    return out
