"""Building a video's index: which frames really decode, their timestamps and keyframes.

The index is built from demuxed packets wherever that is exact, and checked against what
the decoder produces at the start and the end of the stream; on any disagreement the
whole stream is decoded and what decodes wins. docs/indexing.md explains the rules.
"""

from __future__ import annotations

import contextlib
import logging
import os
from fractions import Fraction

import numpy as np

from . import _remote
from ._videoinfo import (
    TS_COUNT,
    TS_DTS,
    TS_PTS,
    VideoInfo,
    _exact_orientation,
    _fps_from,
    _seconds,
    display_orientation,
)
from .errors import DecodeError, NoVideoStreamError, VideoOpenError

log = logging.getLogger(__name__)


# Codecs whose demuxed packets map one to one onto shown frames (each packet carries one
# picture, the decoder emits one frame per packet). VP8/VP9 packets are parsed for the
# show_frame bit (hidden alt-ref frames). Every other codec is indexed by a full decode.
_PACKET_EXACT = frozenset(
    {"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "h263", "h263p", "mjpeg", "prores", "dnxhd", "vp8", "vp9"}
)


@contextlib.contextmanager
def _open(path: str, loc: dict | None = None):
    """The container of ``path``: a local file by name, anything else through the current
    storage (``loc``: the member's byte range and the object's identity)."""
    import av

    f = fd = None
    try:
        if _remote.is_local(path):
            target = path
        else:
            f, fd = _remote.current().open_indexed(path, **(loc or {}))
            target = f
        try:
            c = av.open(target, "r")
        except av.FFmpegError as exc:
            raise VideoOpenError(path, f"FFmpeg cannot open it: {exc}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise VideoOpenError(path, f"cannot open: {exc}") from None
        if f is not None:
            f.end_header()
        with c:
            yield c
    finally:
        if f is not None:
            f.close()
        if fd is not None:
            os.close(fd)


def _is_attached_pic(st) -> bool:
    import av

    return bool(int(st.disposition) & int(av.stream.Disposition.attached_pic))


def select_stream(container, path: str, stream: int | None):
    """The stream to index: ``stream`` if given (must be video), else the best video stream."""
    streams = list(container.streams)
    if stream is not None:
        if stream >= len(streams):
            raise NoVideoStreamError(path, f"stream {stream} does not exist ({len(streams)} streams)", hint="probe(stream=...)")
        st = streams[stream]
        if st.type != "video":
            raise NoVideoStreamError(path, f"stream {stream} is {st.type}, not video", hint="probe(stream=...)")
        return st
    cands = [s for s in streams if s.type == "video" and not _is_attached_pic(s)]
    if not cands:
        kinds = ", ".join(f"{s.index}:{s.type}" + (" (attached picture)" if _is_attached_pic(s) else "") for s in streams)
        raise NoVideoStreamError(path, f"no video stream (streams: {kinds or 'none'})")

    def score(s):
        frames = int(s.frames or 0)
        if frames <= 0 and s.duration and s.average_rate:
            frames = int(float(s.duration * s.time_base) * float(s.average_rate))
        cc = s.codec_context
        return (frames, int(cc.width or 0) * int(cc.height or 0), -s.index)

    return max(cands, key=score)


def _fill(values: list) -> np.ndarray | None:
    """Missing timestamps (None) become the previous one plus the median step; None if all are missing."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    steps = np.diff(np.asarray(known, dtype=np.int64))
    step = int(np.median(steps)) if len(steps) and np.median(steps) > 0 else 1
    out = np.empty(len(values), dtype=np.int64)
    first_known = next(i for i, v in enumerate(values) if v is not None)
    for i in range(first_known, -1, -1):  # leading gaps count back from the first known one
        out[i] = values[first_known] - (first_known - i) * step
    for i in range(first_known + 1, len(values)):
        out[i] = values[i] if values[i] is not None else out[i - 1] + step
    return out


def _increasing(arr: np.ndarray | None) -> bool:
    return arr is not None and (len(arr) < 2 or bool(np.all(np.diff(arr) > 0)))


def _timestamp_rule(pts: list, dts: list) -> tuple[str, np.ndarray]:
    """Pick how frames are timed from the decoder's (pts, dts) in output order."""
    arr = _fill([p if p is not None else d for p, d in zip(pts, dts)])
    if _increasing(arr):
        return TS_PTS, arr
    arr = _fill(dts)
    if _increasing(arr):
        return TS_DTS, arr
    return TS_COUNT, np.arange(len(pts), dtype=np.int64)


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The display matrix FFmpeg attached to a decoded frame (from the container or the stream), or None."""
    from av.sidedata.sidedata import Type

    sd = frame.side_data.get(Type.DISPLAYMATRIX)
    if sd is None:
        return None
    raw = bytes(sd)
    if len(raw) != 36:
        return None
    return tuple(int(v) for v in np.frombuffer(raw, dtype="=i4"))  # FFmpeg stores native-endian int32


def _configure(st, threads: int | None) -> None:
    cc = st.codec_context
    if threads is not None:
        cc.thread_type = "AUTO" if threads != 1 else "SLICE"
        cc.thread_count = threads


def _decode_all(container, st, path: str, threads: int | None):
    """Decode the whole stream: ([pts], [dts], [key], first frame or None, error or None)."""
    import av

    _configure(st, threads)
    pts, dts, key = [], [], []
    first = None
    error = None
    try:
        for frame in container.decode(st):
            if first is None:
                first = frame
            pts.append(frame.pts)
            dts.append(frame.dts)
            key.append(bool(frame.key_frame))
    except av.FFmpegError as exc:
        error = str(exc)
    return pts, dts, key, first, error


def _vp8_shown(data: bytes) -> int:
    return (data[0] >> 4) & 1 if data else 0


def _vp9_frame_shown(data: bytes) -> int:
    if not data:
        return 0
    b = data[0]
    if (b >> 6) != 2:
        raise ValueError("bad VP9 frame marker")
    profile = ((b >> 5) & 1) | (((b >> 4) & 1) << 1)
    bit = 3
    if profile == 3:
        bit -= 1  # reserved zero bit
    show_existing = (b >> bit) & 1
    if show_existing:
        return 1
    bit -= 2  # frame_type
    if bit < 0:
        if len(data) < 2:
            raise ValueError("short VP9 frame")
        return (data[1] >> (7 + bit)) & 1 if bit == -1 else (data[1] >> 6) & 1
    return (b >> bit) & 1


def _vp9_shown(data: bytes) -> int:
    """Number of shown frames in one VP9 packet (a superframe holds several)."""
    if not data:
        return 0
    last = data[-1]
    if (last & 0xE0) == 0xC0:
        n = (last & 7) + 1
        mag = ((last >> 3) & 3) + 1
        size = 2 + mag * n
        if len(data) >= size and data[-size] == last:
            shown = 0
            off = 0
            idx = len(data) - size + 1
            for _ in range(n):
                fsize = int.from_bytes(data[idx : idx + mag], "little")
                idx += mag
                shown += _vp9_frame_shown(data[off : off + fsize])
                off += fsize
            return shown
    return _vp9_frame_shown(data)


class _NotExact(Exception):
    """The packet-derived index cannot be trusted for this stream."""


def _packet_index(container, st, codec: str):
    """(sorted pts, {keyframe pts: byte position of its packet, -1 unknown}, discarded packets)
    from demuxing only; raises _NotExact when unsure."""
    import av

    shown_fn = _vp8_shown if codec == "vp8" else _vp9_shown if codec == "vp9" else None
    pts_list = []
    key_pts = {}
    discarded = 0
    try:
        for pkt in container.demux(st):
            if pkt.size == 0:
                continue  # the end-of-stream flush packet, or an empty AVI chunk (no frame)
            if pkt.is_discard:
                discarded += 1
                continue  # dropped by the decoder too (e.g. before an MP4 edit list start)
            if pkt.is_corrupt or pkt.pts is None:
                raise _NotExact("corrupt packet or packet without pts")
            if shown_fn is not None:
                try:
                    shown = shown_fn(bytes(pkt))
                except (ValueError, IndexError) as exc:
                    raise _NotExact(f"unparsable packet: {exc}") from None
                if shown == 0:
                    continue  # hidden alt-ref frame: decoded, never shown
                if shown != 1:
                    raise _NotExact("packet shows several frames")
            pts_list.append(int(pkt.pts))
            if pkt.is_keyframe:
                pos = pkt.pos
                key_pts[int(pkt.pts)] = int(pos) if pos is not None and pos >= 0 else -1
    except av.FFmpegError as exc:
        raise _NotExact(f"demux error: {exc}") from None
    arr = np.asarray(sorted(pts_list), dtype=np.int64)
    if len(arr) > 1 and not bool(np.all(np.diff(arr) > 0)):
        raise _NotExact("duplicate packet timestamps")
    return arr, key_pts, discarded


def _discarded_packets(path: str, stream_index: int, loc: dict | None = None) -> int:
    """Packets of the stream that the container marks to be dropped (before an edit list's start)."""
    import av

    n = 0
    try:
        with _open(path, loc) as c:
            for pkt in c.demux(list(c.streams)[stream_index]):
                if pkt.size and pkt.is_discard:
                    n += 1
    except (av.FFmpegError, VideoOpenError) as exc:  # a damaged file: count what demuxes
        log.debug("%s: demuxing for discarded packets stopped: %s", path, exc)
    return n


def _verify(path: str, stream_index: int, pts: np.ndarray, keyframes: np.ndarray, tb: Fraction, threads: int | None,
            loc: dict | None = None):
    """Decode the first GOP and the last GOP through the reader; return (ok, first frame or None)."""
    from ._decode import VideoReader

    n = len(pts)
    provisional = VideoInfo(
        path=path, stream=stream_index, num_frames=n, pts=pts, pts_seconds=_seconds(pts, tb), keyframes=keyframes,
        fps=0.0, width=0, height=0, rotation=0, codec="", pix_fmt="", time_base=tb, **(loc or {}),
    )
    first = []

    def keep_first(pos, frame):
        if pos == 0:
            first.append(frame)

    # First GOP: from the start up to the second keyframe; last GOP: the last keyframe to
    # the end, and nothing may decode after it. With one keyframe that is the whole stream.
    head = int(keyframes[1]) if len(keyframes) > 1 else n
    # Indexing counts what decodes: a concealed (corrupt) frame is still a frame of the stream.
    reader = VideoReader(path, provisional, threads=1 if threads is None else threads, allow_corrupt=True)
    try:
        reader.decode(range(head), keep_first)
        if len(keyframes) > 1:
            reader.decode(range(int(keyframes[-1]), n), lambda pos, frame: None)
        extra = reader.drain()
    except DecodeError as exc:
        log.info("%s: packet index disagrees with decoding (%s); decoding fully", path, exc.reason)
        return False, None
    finally:
        reader.close()
    if extra:
        log.info("%s: %d frames decode after the last packet; decoding fully", path, extra)
        return False, None
    return True, (first[0] if first else None)


def _rgb_frames(path: str, info: VideoInfo, indices: range, threads: int | None, *, warm_from: int | None = None):
    from ._decode import VideoReader

    got = {}
    lo = indices.start if warm_from is None else warm_from
    wanted = range(lo, indices.stop)

    def keep(pos, frame):
        if wanted[pos] >= indices.start:
            got[wanted[pos]] = frame.to_ndarray(format="rgb24")

    with VideoReader(path, info, threads=1 if threads is None else threads, skip_nonref=False,
                     allow_corrupt=True) as reader:
        reader.decode(wanted, keep)
    return got


def _seek_is_exact(path: str, info: VideoInfo, threads: int | None) -> bool:
    """Does a seek to the last keyframe give the frames a decode running through it gives?

    Some files flag frames as keyframes that FFmpeg cannot decode on their own (seen: an
    H.264 4:4:4 file whose later IDR frames decode to garbage after a seek). Checked on
    the last keyframe: decoded continuing from the keyframe before it, and after a seek.
    """
    kf = info.keyframes
    if len(kf) < 2 or info.timestamps == TS_COUNT:
        return True
    k, prev = int(kf[-1]), int(kf[-2])
    span = range(k, min(info.num_frames, k + 3))
    try:
        through = _rgb_frames(path, info, span, threads, warm_from=prev)
        seeked = _rgb_frames(path, info, span, threads)
    except DecodeError as exc:
        log.info("%s: seek check failed to decode (%s)", path, exc.reason)
        return False
    return all(np.array_equal(through[i], seeked[i]) for i in span)


def _build(path: str, stream: int | None, threads: int | None = None, loc: dict | None = None) -> VideoInfo:
    """The index of ``path``; ``loc`` (VideoInfo fields: the object's identity, a member's
    byte range) says how to open it when it is not a local file."""
    loc = dict(loc or {})
    with _open(path, loc) as c:
        st = select_stream(c, path, stream)
        idx = st.index
        cc = st.codec_context
        decoder = cc.name or "unknown"
        codec = cc.codec.canonical_name or decoder
        header_frames = int(st.frames or 0)
        tb = st.time_base or Fraction(1, 1)
        tb = Fraction(tb.numerator, tb.denominator)
        avg_rate = st.average_rate or st.guessed_rate
        packet_pts = None
        key_pts = None
        discarded = None
        # The decoder's behaviour decides whether packets map onto frames: keyed by its name.
        if decoder in _PACKET_EXACT:
            try:
                packet_pts, key_pts, discarded = _packet_index(c, st, decoder)
            except _NotExact as exc:
                log.info("%s: stream %d indexed by full decode (%s)", path, idx, exc)

    first = None
    rule = TS_PTS
    ts = None
    key_pos = None
    error = None
    if packet_pts is not None and len(packet_pts) > 0 and key_pts:
        pos = {int(p): i for i, p in enumerate(packet_pts)}
        keyframes = np.asarray(sorted(pos[p] for p in key_pts), dtype=np.int64)
        ok, first = _verify(path, idx, packet_pts, keyframes, tb, threads, loc)
        if ok:
            ts = packet_pts
            key_pos = np.asarray([key_pts[int(packet_pts[k])] for k in keyframes], dtype=np.int64)
    if ts is None:
        with _open(path, loc) as c:
            st = list(c.streams)[idx]
            pts_l, dts_l, key_l, first, error = _decode_all(c, st, path, threads)
        if not pts_l:
            reason = f"no frame of video stream {idx} decodes"
            if error:
                reason += f" ({error})"
            raise DecodeError(path, reason)
        rule, ts = _timestamp_rule(pts_l, dts_l)
        keyframes = np.flatnonzero(np.asarray(key_l, dtype=bool)).astype(np.int64)
        if rule == TS_COUNT:
            # Without usable timestamps only a decode from the start is exact.
            keyframes = np.asarray([0], dtype=np.int64)
            period = (1 / avg_rate) if avg_rate else Fraction(1, 25)
            ts = np.asarray([round(i * period / tb) for i in range(len(pts_l))], dtype=np.int64)
    if first is None:
        raise DecodeError(path, f"no frame of video stream {idx} decodes")
    if len(keyframes) > 1:
        candidate = VideoInfo(
            path=path, stream=idx, num_frames=len(ts), pts=ts, pts_seconds=_seconds(ts, tb), keyframes=keyframes,
            fps=0.0, width=0, height=0, rotation=0, codec=codec, pix_fmt="", time_base=tb, timestamps=rule,
            decoder=decoder, **loc,
        )
        if not _seek_is_exact(path, candidate, threads):
            log.warning(
                "%s: stream %d: a seek to a keyframe does not reproduce the frames of a continuous decode; "
                "reads of this file decode from its first keyframe (re-encoding the file fixes this)", path, idx
            )
            keyframes = keyframes[:1]
            key_pos = key_pos[:1] if key_pos is not None else None

    n = len(ts)
    secs = _seconds(ts, tb)
    # Exact, then rounded once: 250 frames at 1/12800 give 25.0, not 24.999999999999996.
    fps = float(_fps_from(ts, tb, Fraction(avg_rate) if avg_rate else None))
    container_frames = -1
    if header_frames > 0:
        if header_frames > n and discarded is None:
            discarded = _discarded_packets(path, idx, loc)
        container_frames = max(1, header_frames - (discarded or 0))
    if container_frames > n:
        log.warning(
            "%s: stream %d decodes %d of the %d frames its container claims%s; indexed the %d that decode "
            "(later reads and loaders see only those)", path, idx, n, container_frames,
            f" (the decoder stops: {error})" if error else "", n,
        )
    elif error is not None:
        log.warning("%s: stream %d stops decoding after %d frames: %s", path, idx, n, error)
    rotation = int(round(getattr(first, "rotation", 0) or 0))
    matrix = _display_matrix(first)
    if _exact_orientation(matrix) is None:
        log.warning(
            "%s: stream %d: the display matrix %s is not a quarter turn (rotation %d degrees); its frames are "
            "delivered as coded", path, idx, list(matrix), rotation,
        )
    turn, mirror = display_orientation(matrix)
    return VideoInfo(
        path=path,
        stream=idx,
        num_frames=n,
        pts=ts,
        pts_seconds=secs,
        keyframes=keyframes,
        fps=fps,
        width=int(first.width),
        height=int(first.height),
        rotation=rotation,
        codec=codec,
        pix_fmt=str(first.format.name),
        time_base=tb,
        timestamps=rule,
        display_matrix=matrix,
        display_rotation=turn,
        display_hflip=mirror,
        container_frames=container_frames,
        decoder=decoder,
        keyframe_pos=key_pos,
    )
