"""``VideoInfo``: what one video stream holds, and the rules its fields follow.

The timestamp rules (how frame times are derived), the display orientation a display
matrix describes, the exact frame rate, and which files decode fewer frames than their
container claims. No decoding here: building an index is ``_index_build``.
"""

from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when the meaning or layout of a cache entry changes: old entries are then ignored.
# 3: the display matrix and the orientation derived from it; 4: container_frames and decoder;
# 5: keyframe_pos; 6: file_etag, data_offset and data_size (remote objects, tar members).
CACHE_FORMAT = 6

# How frames are delivered: "display" as a player shows them (the display matrix applied),
# "coded" as the decoder outputs them.
ORIENTATIONS = ("display", "coded")

# Timestamp rules, recorded in VideoInfo.timestamps (see docs/indexing.md).
TS_PTS = "pts"  # frame.pts (falling back to frame.dts where pts is missing)
TS_DTS = "dts"  # frame.dts: the decoder's pts are out of order but its dts are not (AVI packed B-frames)
TS_COUNT = "count"  # neither is usable: frames are identified by their position in a decode from the start


@dataclasses.dataclass(frozen=True, eq=False)
class VideoInfo:
    """What one video stream holds. Arrays are read-only numpy arrays.

    ``pts`` (int64, in ``time_base`` units) and ``pts_seconds`` (float64) list every frame
    that decodes, in presentation order; ``keyframes`` lists the indices of frames that
    decode without earlier frames. ``width``/``height`` are the coded size. ``rotation`` is
    FFmpeg's counter-clockwise angle of the display matrix in degrees (``frame.rotation``);
    ``display_matrix`` is the whole matrix (9 int32 as FFmpeg stores them, None: none) and
    ``display_rotation`` (0, 90, 180 or 270, counter-clockwise) then ``display_hflip``
    (mirror left-right) is the transform that shows a coded frame the way a player does.
    ``timestamps`` says how frame times were derived: "pts", "dts" or "count" (see
    docs/indexing.md). ``file_size`` and ``file_mtime_ns`` identify the file the index was
    built from (-1: unknown); decoders refuse a file that no longer matches them. ``codec``
    is the codec ("av1"), ``decoder`` the FFmpeg decoder that indexed it ("libdav1d"; ""
    when unknown). ``container_frames`` is the number of frames the container says the
    stream presents (its header count less the packets its edit list discards; -1: it does
    not say); more than ``num_frames`` means the file decodes fewer frames than it claims
    (``ringload.probe.short_files_warning``). ``keyframe_pos`` is the byte position in the
    file of each keyframe's packet (int64, one per keyframe; -1: unknown, e.g. for files
    indexed by a full decode), for reads of exactly a GOP's bytes from remote storage.
    ``file_etag`` is a remote object's version (its ETag or version id; "": local or
    unknown). A member of a tar shard is bytes [``data_offset``, ``data_offset + data_size``)
    of its shard, whose size and version ``file_*`` then describe (-1: the whole file).
    """

    path: str
    stream: int
    num_frames: int
    pts: np.ndarray
    pts_seconds: np.ndarray
    keyframes: np.ndarray
    fps: float
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str
    time_base: Fraction
    timestamps: str = TS_PTS
    file_size: int = -1
    file_mtime_ns: int = -1
    display_matrix: tuple[int, ...] | None = None
    display_rotation: int = 0
    display_hflip: bool = False
    container_frames: int = -1
    decoder: str = ""
    keyframe_pos: np.ndarray | None = None
    file_etag: str = ""
    data_offset: int = 0
    data_size: int = -1

    def __post_init__(self):
        kp = self.keyframe_pos
        if kp is None or len(kp) != len(self.keyframes):
            # Unknown (or keyframes replaced without their positions): -1 for each.
            object.__setattr__(self, "keyframe_pos", np.full(len(self.keyframes), -1, dtype=np.int64))
        if self.num_frames != len(self.pts) or len(self.pts) != len(self.pts_seconds):
            raise ValueError("VideoInfo: num_frames, pts and pts_seconds disagree")
        if self.timestamps not in (TS_PTS, TS_DTS, TS_COUNT):
            raise ValueError(f"VideoInfo: unknown timestamps rule {self.timestamps!r}")
        if self.display_rotation not in (0, 90, 180, 270):
            raise ValueError(f"VideoInfo: display_rotation {self.display_rotation!r} is not 0, 90, 180 or 270")
        for name in ("pts", "pts_seconds", "keyframes", "keyframe_pos"):
            arr = getattr(self, name)
            if arr.flags.writeable:
                arr = arr.copy()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    def __setstate__(self, state):
        # Unpickled arrays (e.g. in a decoder process) come back writeable: lock them again.
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            object.__setattr__(self, key, value)

    def orient(self, orientation: str = "display") -> tuple[int, bool]:
        """(counter-clockwise rotation, mirror) that turns a coded frame into one delivered with ``orientation``."""
        return (self.display_rotation, bool(self.display_hflip)) if orientation == "display" else (0, False)

    def size(self, orientation: str = "display") -> tuple[int, int]:
        """(height, width) of a whole frame delivered with ``orientation``."""
        if self.orient(orientation)[0] in (90, 270):
            return self.width, self.height
        return self.height, self.width

    @property
    def duration_seconds(self) -> float:
        """Span from the first frame to the end of the last one (one average frame period)."""
        if self.num_frames == 0:
            return 0.0
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        return float(self.pts_seconds[-1] - self.pts_seconds[0]) + period

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "path": self.path,
            "stream": self.stream,
            "num_frames": self.num_frames,
            "pts": self.pts.tolist(),
            "keyframes": self.keyframes.tolist(),
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "rotation": self.rotation,
            "codec": self.codec,
            "pix_fmt": self.pix_fmt,
            "time_base": [self.time_base.numerator, self.time_base.denominator],
            "timestamps": self.timestamps,
            "file_size": self.file_size,
            "file_mtime_ns": self.file_mtime_ns,
            "display_matrix": list(self.display_matrix) if self.display_matrix is not None else None,
            "display_rotation": self.display_rotation,
            "display_hflip": bool(self.display_hflip),
            "container_frames": self.container_frames,
            "decoder": self.decoder,
            "keyframe_pos": self.keyframe_pos.tolist(),
            "file_etag": self.file_etag,
            "data_offset": self.data_offset,
            "data_size": self.data_size,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VideoInfo:
        if d.get("format") != CACHE_FORMAT:
            raise ValueError("cache format mismatch")
        tb = Fraction(int(d["time_base"][0]), int(d["time_base"][1]))
        pts = np.asarray(d["pts"], dtype=np.int64)
        return cls(
            path=str(d["path"]),
            stream=int(d["stream"]),
            num_frames=int(d["num_frames"]),
            pts=pts,
            pts_seconds=_seconds(pts, tb),
            keyframes=np.asarray(d["keyframes"], dtype=np.int64),
            fps=float(d["fps"]),
            width=int(d["width"]),
            height=int(d["height"]),
            rotation=int(d["rotation"]),
            codec=str(d["codec"]),
            pix_fmt=str(d["pix_fmt"]),
            time_base=tb,
            timestamps=str(d["timestamps"]),
            file_size=int(d["file_size"]),
            file_mtime_ns=int(d["file_mtime_ns"]),
            display_matrix=tuple(int(v) for v in d["display_matrix"]) if d["display_matrix"] is not None else None,
            display_rotation=int(d["display_rotation"]),
            display_hflip=bool(d["display_hflip"]),
            container_frames=int(d["container_frames"]),
            decoder=str(d["decoder"]),
            keyframe_pos=np.asarray(d["keyframe_pos"], dtype=np.int64),
            file_etag=str(d["file_etag"]),
            data_offset=int(d["data_offset"]),
            data_size=int(d["data_size"]),
        )


def _seconds(pts: np.ndarray, tb: Fraction) -> np.ndarray:
    return pts.astype(np.float64) * (tb.numerator / tb.denominator)


def _orientation_table() -> dict[tuple[int, int, int, int], tuple[int, bool]]:
    """Signs (a, b, c, d) of a display matrix's entries 0, 1, 3, 4 -> (counter-clockwise turn, mirror)."""
    # FFmpeg shows the coded point (x, y), y pointing down, at (a*x + c*y, b*x + d*y): the
    # reading under which its command line picks its autorotation filters (transpose=clock
    # for a = d = 0 and c < 0, cclock_flip for c > 0, hflip for a < 0, ...). Checked against
    # the ffmpeg command line on real files in tests/test_orientation.py.
    ccw = np.array([[0, 1], [-1, 0]])  # a quarter turn counter-clockwise: (x, y) -> (y, -x)
    mirror = np.array([[-1, 0], [0, 1]])  # applied after the turn
    table = {}
    for k in range(4):
        for flip in (False, True):
            m = np.linalg.matrix_power(ccw, k)
            if flip:
                m = mirror @ m
            table[(int(m[0, 0]), int(m[1, 0]), int(m[0, 1]), int(m[1, 1]))] = (90 * k, flip)
    return table


_ORIENTATION_TABLE = _orientation_table()


def _exact_orientation(matrix) -> tuple[int, bool] | None:
    """The quarter-turn transform (and mirror) ``matrix`` describes; None if it is none of the eight."""
    if matrix is None:
        return 0, False
    abcd = [int(matrix[i]) for i in (0, 1, 3, 4)]
    big = max(abs(v) for v in abcd)
    if big == 0:
        return None
    # Fixed-point cos/sin of a quarter turn are not always exactly 0: near zero counts as zero.
    signs = tuple(0 if abs(v) * 1000 < big else (1 if v > 0 else -1) for v in abcd)
    return _ORIENTATION_TABLE.get(signs)


def display_orientation(matrix) -> tuple[int, bool]:
    """(counter-clockwise rotation, mirror after it) that shows a frame as FFmpeg's display
    ``matrix`` (9 int32, or None) says; (0, False) for a matrix that is not a quarter turn."""
    return _exact_orientation(matrix) or (0, False)


def frame_timestamp(frame, rule: str):
    """The timestamp of a decoded frame under ``rule`` (None when it has none)."""
    if rule == TS_DTS:
        return frame.dts
    p = frame.pts
    return p if p is not None else frame.dts


def _fps_from(ts: np.ndarray, tb: Fraction, fallback: Fraction | None) -> Fraction:
    """The average frame rate over the timestamps, exactly: (n - 1) / (last - first)."""
    n = len(ts)
    if n > 1 and int(ts[-1]) > int(ts[0]):
        return Fraction(n - 1) / (Fraction(int(ts[-1]) - int(ts[0])) * tb)
    return fallback if fallback else Fraction(0)


def fps_fraction(info: VideoInfo) -> Fraction:
    """``info.fps`` as the exact fraction it was computed from: (n - 1) frame periods over the
    span of the timestamps (``Fraction(25)``, ``Fraction(30000, 1001)``). For a stream with
    one frame, ``fps`` is the container's average rate, recovered from the float."""
    return _fps_from(info.pts, info.time_base, Fraction(info.fps).limit_denominator(1 << 20) if info.fps > 0 else None)


def short_files(infos) -> list[VideoInfo]:
    """The videos of ``infos`` (None entries are skipped) that decode fewer frames than
    their container claims (``container_frames > num_frames``), in order."""
    return [i for i in infos if i is not None and i.container_frames > i.num_frames]


def short_files_warning(infos, *, limit: int | None = 5) -> str | None:
    """One line naming the videos that decode fewer frames than their container claims,
    each with both counts, or None when there are none. ``limit``: how many to name
    (None: all). Made for ``VideoLoader`` to log at construction, whether the index came
    from the cache or not; ``ringload index`` prints it in its summary."""
    short = short_files(infos)
    if not short:
        return None
    n = len(short)
    shown = short if limit is None else short[: max(0, limit)]
    listed = ", ".join(f"{i.path} ({i.num_frames} of {i.container_frames})" for i in shown)
    more = f" and {n - len(shown)} more" if n > len(shown) else ""
    what = "1 video decodes fewer frames than its container claims" if n == 1 else (
        f"{n} videos decode fewer frames than their containers claim"
    )
    return f"{what} (damaged or cut short; only the frames that decode are used): {listed}{more}"


def display_to_coded_boxes(boxes, width, height, rotation, hflip) -> np.ndarray:
    """Boxes (x, y, w, h) on displayed frames -> boxes of the same pixels on the coded frames.

    ``width``/``height`` are the coded sizes; a frame is displayed turned ``rotation``
    degrees counter-clockwise, then mirrored if ``hflip`` (``VideoInfo.orient``). Scalars
    or one value per box.
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(b)
    W, H, rot, flip = (np.broadcast_to(np.asarray(v), (n,)) for v in (width, height, rotation, hflip))
    W, H, rot, flip = W.astype(np.int64), H.astype(np.int64), rot.astype(np.int64), flip.astype(bool)
    x, y, w, h = (b[:, i].copy() for i in range(4))
    turned = (rot == 90) | (rot == 270)
    # The mirror came last: undo it first, on the displayed width.
    x = np.where(flip, np.where(turned, H, W) - x - w, x)
    out = np.stack([x, y, w, h], axis=1)
    r90, r180, r270 = rot == 90, rot == 180, rot == 270
    # np.rot90 semantics: a quarter turn counter-clockwise shows coded column W-1-i as row i.
    out[r90] = np.stack([W - y - h, x, h, w], axis=1)[r90]
    out[r180] = np.stack([W - x - w, H - y - h, w, h], axis=1)[r180]
    out[r270] = np.stack([y, H - x - w, h, w], axis=1)[r270]
    return out
