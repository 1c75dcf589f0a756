"""Camera-like synthetic videos for the demo, the tests and the benchmarks.

A flat or trivially moving picture compresses to almost nothing and decodes far faster
than real footage, which would make every speed number meaningless. ``make_video`` renders
what a handheld or robot camera sees instead: a large procedural scene (multi-scale
texture, hard edges, colour regions) viewed through a camera that pans and zooms along a
smooth path, a few independently moving textured objects, slow exposure drift and
per-frame sensor noise. The frames are rendered straight into YUV 4:2:0 planes with numpy
(no colour conversion per frame) so that a 20 s 1080p30 H.264 file takes seconds, not
minutes, to make.
"""

from __future__ import annotations

import logging
import os
import pathlib
from fractions import Fraction

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CODECS", "make_video", "av1_encoder"]

#: Codec names accepted by ``make_video``.
CODECS = ("h264", "hevc", "vp9", "av1")

_AV1_ENCODERS = ("libsvtav1", "libaom-av1", "librav1e")

_NOISE_BANK = 6  # distinct sensor-noise fields; each frame takes one at a random offset
_NOISE_MARGIN = 32


def av1_encoder() -> str | None:
    """Name of the AV1 encoder the bundled FFmpeg offers, or ``None`` when it has none."""
    import av

    for name in _AV1_ENCODERS:
        try:
            av.Codec(name, "w")
        except Exception:  # av raises different types for unknown codecs across versions
            continue
        return name
    return None


def make_video(
    path: str | os.PathLike,
    *,
    width: int,
    height: int,
    fps: float | Fraction,
    seconds: float,
    gop: int,
    bframes: int,
    codec: str = "h264",
    seed: int = 0,
    crf: int | None = None,
) -> pathlib.Path:
    """Write a camera-like synthetic video to ``path`` and return the path.

    ``round(seconds * fps)`` frames of ``width`` x ``height`` (both even) in yuv420p.
    Every ``gop``-th frame is a keyframe (closed GOPs, no scene-cut keyframes) and, for
    codecs that have them (h264, hevc), ``bframes`` consecutive B-frames are used between
    reference frames. vp9 and av1 have no B-frames; ``bframes`` is then ignored. The same
    arguments and ``seed`` give the same pictures; the encoders run on one thread, so
    the file does not depend on the machine's CPU count, but x264's bits are not
    reproducible in every process state, so two encodes may differ by encoder noise. The container follows the file
    extension (``.mp4``, ``.mkv``, ``.webm`` ...). ``crf`` overrides the codec's default
    quality setting. The file is written under a temporary name and renamed when complete,
    so a reader never sees a half-written video.
    """
    import av

    path = pathlib.Path(path)
    fps_q = _as_fraction(fps)
    _validate(width=width, height=height, fps=fps_q, seconds=seconds, gop=gop, bframes=bframes, codec=codec)
    num_frames = int(round(float(seconds) * fps_q))
    if num_frames < 1:
        raise ConfigError(f"{path}: seconds={seconds} at fps={fps} gives no frame; raise seconds")

    encoder, options, uses_bframes = _encoder_settings(codec, gop=gop, bframes=bframes, crf=crf)
    if bframes and not uses_bframes:
        log.info("%s: %s has no B-frames; bframes=%d ignored", path, codec, bframes)

    scene = _Scene(width=width, height=height, num_frames=num_frames, seed=seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    container = av.open(str(tmp), mode="w", format=_container_format(path))
    try:
        stream = container.add_stream(encoder, rate=fps_q, options=options)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / fps_q
        stream.codec_context.gop_size = gop
        if uses_bframes:
            stream.codec_context.max_b_frames = bframes
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(scene.render(i), format="yuv420p")
            frame.pts = i
            frame.time_base = stream.codec_context.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        container.close()
    except BaseException:
        container.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def _as_fraction(fps) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    if isinstance(fps, float):
        return Fraction(fps).limit_denominator(1001)
    return Fraction(fps)


def _validate(*, width, height, fps, seconds, gop, bframes, codec) -> None:
    if codec not in CODECS:
        raise ConfigError(f"codec={codec!r} is not supported; use one of {', '.join(CODECS)}")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < 16:
            raise ConfigError(f"{name}={value!r}: must be an integer >= 16")
        if value % 2:
            raise ConfigError(f"{name}={value}: yuv420p encoders need an even size; use {value + 1} or {value - 1}")
    if fps <= 0:
        raise ConfigError(f"fps={fps}: must be > 0")
    if not seconds > 0:
        raise ConfigError(f"seconds={seconds}: must be > 0")
    if not isinstance(gop, int) or gop < 1:
        raise ConfigError(f"gop={gop!r}: must be an integer >= 1")
    if not isinstance(bframes, int) or bframes < 0 or bframes > 16:
        raise ConfigError(f"bframes={bframes!r}: must be an integer in 0..16")


def _container_format(path: pathlib.Path) -> str | None:
    # The temporary name keeps the suffix, but spell the muxer out so odd names work too.
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".m4v": "mp4"}.get(
        path.suffix.lower()
    )


def _encoder_settings(codec: str, *, gop: int, bframes: int, crf: int | None):
    """(encoder name, encoder options, whether B-frames apply)."""
    if codec == "h264":
        # keyint = min-keyint and no scene cuts: every GOP is exactly `gop` frames.
        # b-adapt=0 makes x264 use the B-frames it is given instead of deciding per scene.
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-adapt=0:open-gop=0"
        # One encoder thread: x264's output depends on its thread count, which follows the
        # CPUs the process may use.
        opts = {"preset": "veryfast", "crf": str(crf or 20), "threads": "1", "x264-params": params}
        return "libx264", opts, True
    if codec == "hevc":
        params = (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:b-adapt=0:open-gop=0"
            ":log-level=error"
        )
        opts = {"preset": "ultrafast", "crf": str(crf or 26), "threads": "1", "x265-params": params + ":frame-threads=1"}
        return "libx265", opts, True
    if codec == "vp9":
        opts = {
            "deadline": "realtime",
            "cpu-used": "8",
            "crf": str(crf or 33),
            "b": "0",
            "keyint_min": str(gop),
            "g": str(gop),
            "threads": "1",
            # Alternate reference frames are hidden frames that would break "one packet, one frame".
            "auto-alt-ref": "0",
            "lag-in-frames": "0",
        }
        return "libvpx-vp9", opts, False
    encoder = av1_encoder()
    if encoder is None:
        raise ConfigError(
            f"codec='av1': this FFmpeg build has none of {', '.join(_AV1_ENCODERS)}; choose another codec"
        )
    if encoder == "libsvtav1":
        opts = {"preset": "12", "crf": str(crf or 35), "svtav1-params": f"keyint={gop}:scd=0:irefresh-type=2"}
    elif encoder == "libaom-av1":
        opts = {"cpu-used": "8", "crf": str(crf or 35), "usage": "realtime", "g": str(gop), "keyint_min": str(gop)}
    else:
        opts = {"speed": "10", "qp": str(crf or 100), "rav1e-params": f"keyint={gop}:min_keyint={gop}"}
    return encoder, opts, False


class _Scene:
    """Renders frame ``i`` of the synthetic camera view as a (H*3/2, W) yuv420p array."""

    def __init__(self, *, width: int, height: int, num_frames: int, seed: int):
        self.width = width
        self.height = height
        rng = np.random.default_rng(seed)
        self._seed = seed
        self._num_frames = num_frames
        # The camera window is at most this much larger than the frame (zoomed out).
        self._zoom_amp = 0.08
        self._pan_x = 0.35 * width
        self._pan_y = 0.25 * height
        tex_w = _even(int(width * (1 + self._zoom_amp) + 2 * self._pan_x) + 8)
        tex_h = _even(int(height * (1 + self._zoom_amp) + 2 * self._pan_y) + 8)
        self._y, self._u, self._v = _texture(tex_h, tex_w, rng)
        # Smooth camera path: a few sinusoids with random phases, slow enough to look like
        # a person or robot moving (a full pan takes seconds, not frames).
        self._path = {
            key: (rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.5, 1.0, 3), rng.uniform(0.03, 0.25, 3))
            for key in ("x", "y", "z", "exposure")
        }
        self._objects = [_MovingObject(width, height, rng) for _ in range(4)]
        sigma = 2.2
        nh, nw = height + _NOISE_MARGIN, width + _NOISE_MARGIN
        self._noise_y = [
            np.clip(rng.normal(0, sigma, (nh, nw)), -127, 127).astype(np.int16) for _ in range(_NOISE_BANK)
        ]
        self._noise_c = [
            np.clip(rng.normal(0, sigma * 0.6, (nh // 2, nw // 2)), -127, 127).astype(np.int16)
            for _ in range(_NOISE_BANK)
        ]

    def _wave(self, key: str, t: float) -> float:
        phase, amp, freq = self._path[key]
        total = float(np.sum(amp * np.sin(2 * np.pi * freq * t + phase)))
        return total / float(np.sum(amp))  # in [-1, 1]

    def render(self, i: int) -> np.ndarray:
        w, h = self.width, self.height
        t = i / 30.0  # motion speed in "seconds at 30 fps", independent of the chosen fps
        scale = 1.0 + self._zoom_amp * self._wave("z", t)  # >1: zoomed out
        ty, tx = self._y.shape
        cx = tx / 2 + self._pan_x * self._wave("x", t)
        cy = ty / 2 + self._pan_y * self._wave("y", t)
        x0 = cx - w * scale / 2
        y0 = cy - h * scale / 2
        out = np.empty((h * 3 // 2, w), dtype=np.uint8)
        ys = np.clip((y0 + np.arange(h) * scale).astype(np.intp), 0, ty - 1)
        xs = np.clip((x0 + np.arange(w) * scale).astype(np.intp), 0, tx - 1)
        y_plane = out[:h]
        np.take(self._y.take(ys, axis=0), xs, axis=1, out=y_plane)
        ch, cw = h // 2, w // 2
        ysc = np.clip((y0 / 2 + np.arange(ch) * scale).astype(np.intp), 0, ty // 2 - 1)
        xsc = np.clip((x0 / 2 + np.arange(cw) * scale).astype(np.intp), 0, tx // 2 - 1)
        chroma = out[h:].reshape(-1)  # U then V, each (h/2, w/2), packed row after row
        u_plane = chroma[: ch * cw].reshape(ch, cw)
        v_plane = chroma[ch * cw :].reshape(ch, cw)
        np.take(self._u.take(ysc, axis=0), xsc, axis=1, out=u_plane)
        np.take(self._v.take(ysc, axis=0), xsc, axis=1, out=v_plane)

        for obj in self._objects:
            obj.paint(y_plane, u_plane, v_plane, t)

        # Per-frame randomness is keyed by (seed, frame) so frames do not depend on order.
        frng = np.random.default_rng([self._seed, i])
        gain = 1.0 + 0.06 * self._wave("exposure", t)
        lut = np.clip(np.arange(256) * gain + frng.normal(0, 0.5), 0, 255).astype(np.uint8)
        np.take(lut, y_plane, out=y_plane)
        k, dy, dx = frng.integers(0, _NOISE_BANK), frng.integers(0, _NOISE_MARGIN), frng.integers(0, _NOISE_MARGIN)
        _add_noise(y_plane, self._noise_y[k][dy : dy + h, dx : dx + w])
        _add_noise(u_plane, self._noise_c[k][dy // 2 : dy // 2 + ch, dx // 2 : dx // 2 + cw])
        _add_noise(v_plane, self._noise_c[(k + 1) % _NOISE_BANK][dy // 2 : dy // 2 + ch, dx // 2 : dx // 2 + cw])
        return out


def _add_noise(plane: np.ndarray, noise: np.ndarray) -> None:
    acc = plane.astype(np.int16)
    acc += noise
    np.clip(acc, 0, 255, out=acc)
    plane[...] = acc


def _even(n: int) -> int:
    return n + (n % 2)


def _smooth_noise(h: int, w: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise: a random grid of ``cell``-pixel spacing, bicubically upsampled, in [-1, 1]."""
    from PIL import Image

    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    img = Image.fromarray(grid).resize((gw * cell, gh * cell), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)[:h, :w]


def _texture(h: int, w: int, rng: np.random.Generator):
    """The scene: Y at full size, U and V at half size, uint8."""
    lum = np.zeros((h, w), dtype=np.float32)
    # Multi-octave texture: large shapes down to pixel-level grain (asphalt, foliage, fabric).
    for cell, weight in ((256, 40.0), (64, 28.0), (16, 18.0), (4, 10.0), (2, 6.0)):
        lum += weight * _smooth_noise(h, w, cell, rng)
    # Hard-edged structures (walls, boxes, shelves): rectangles with their own brightness.
    n_rect = max(20, h * w // 40000)
    ry = rng.integers(0, h, n_rect)
    rx = rng.integers(0, w, n_rect)
    rh = rng.integers(h // 60 + 2, h // 6 + 3, n_rect)
    rw = rng.integers(w // 60 + 2, w // 6 + 3, n_rect)
    level = rng.uniform(-60, 60, n_rect)
    for y, x, hh, ww, lv in zip(ry, rx, rh, rw, level):
        lum[y : y + hh, x : x + ww] += lv
    # Thin lines (cables, tile joints, text-like strokes).
    for _ in range(max(10, h // 20)):
        if rng.random() < 0.5:
            y = rng.integers(0, h)
            lum[y : y + rng.integers(1, 4), :] += rng.uniform(-50, 50)
        else:
            x = rng.integers(0, w)
            lum[:, x : x + rng.integers(1, 4)] += rng.uniform(-50, 50)
    y_plane = np.clip(lum + 118.0, 16, 235).astype(np.uint8)
    ch, cw = h // 2, w // 2
    u = 128 + 22 * _smooth_noise(ch, cw, 96, rng) + 8 * _smooth_noise(ch, cw, 12, rng)
    v = 128 + 22 * _smooth_noise(ch, cw, 96, rng) + 8 * _smooth_noise(ch, cw, 12, rng)
    return y_plane, np.clip(u, 16, 240).astype(np.uint8), np.clip(v, 16, 240).astype(np.uint8)


class _MovingObject:
    """A textured disc that crosses the view on its own path (a person, a cart, an arm)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        r = int(rng.uniform(0.06, 0.14) * min(width, height)) // 2 * 2 + 2
        self.r = r
        yy, xx = np.mgrid[-r:r, -r:r]
        self.mask = (yy**2 + xx**2) < r * r
        yyc, xxc = np.mgrid[-r // 2 : r // 2, -r // 2 : r // 2]
        self.mask_c = (yyc**2 + xxc**2) < (r // 2) ** 2
        tex = 60 * _smooth_noise(2 * r, 2 * r, max(2, r // 4), rng) + 20 * _smooth_noise(2 * r, 2 * r, 2, rng)
        self.y = np.clip(tex + rng.uniform(60, 190), 16, 235).astype(np.uint8)
        self.u = np.full((r, r), int(rng.uniform(70, 190)), np.uint8)
        self.v = np.full((r, r), int(rng.uniform(70, 190)), np.uint8)
        self.width, self.height = width, height
        self.start = rng.uniform(0, 1, 2)
        self.vel = rng.uniform(-0.12, 0.12, 2)  # frame widths per second
        self.wobble = rng.uniform(0.02, 0.08)

    def paint(self, y_plane, u_plane, v_plane, t: float) -> None:
        w, h, r = self.width, self.height, self.r
        # Wraps around so the object keeps crossing the view for any duration.
        fx = (self.start[0] + self.vel[0] * t) % 1.4 - 0.2
        fy = (self.start[1] + self.vel[1] * t + self.wobble * np.sin(3 * t)) % 1.4 - 0.2
        cx, cy = int(fx * w) // 2 * 2, int(fy * h) // 2 * 2
        _paste(y_plane, self.y, self.mask, cy - r, cx - r)
        _paste(u_plane, self.u, self.mask_c, (cy - r) // 2, (cx - r) // 2)
        _paste(v_plane, self.v, self.mask_c, (cy - r) // 2, (cx - r) // 2)


def _paste(plane: np.ndarray, patch: np.ndarray, mask: np.ndarray, y0: int, x0: int) -> None:
    ph, pw = patch.shape
    h, w = plane.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + ph, h), min(x0 + pw, w)
    if ya >= yb or xa >= xb:
        return
    sub_patch = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    sub_mask = mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
    region = plane[ya:yb, xa:xb]
    np.copyto(region, sub_patch, where=sub_mask)
