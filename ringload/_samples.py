"""What each sample of a batch holds: its frames, crop box and flip, keyed by the sample.

``Sampler`` turns the plan's (video, start) samples into frame indices (frames, clips at a
stride or a target fps, TSN segments), crop boxes (torchvision's RandomResizedCrop drawn
on the displayed frame, or a centre box) and flips, all from ``ringload._rng`` keyed by
(seed, epoch, sample), so batch k is the same whatever decodes it, and redraws replacement
samples for bad files deterministically.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import _rng
from ._config import LoaderConfig
from ._indexfile import video_dims
from ._videoinfo import display_to_coded_boxes
from .errors import VideoError

# Tolerance when a clip's sampling times are matched to frame timestamps (see _clip_frames).
_TIME_EPS = 1e-6



@dataclasses.dataclass(frozen=True)
class _Content:
    """Samples as decoders see them: ``video`` the file, ``frames`` its frame indices;
    ``entry`` the plan's video (a source row) and ``start`` the plan's start in it."""

    video: np.ndarray
    start: np.ndarray
    frames: np.ndarray
    crop: np.ndarray
    flip: np.ndarray
    entry: np.ndarray
    chunk: np.ndarray | None = None  # bounded: the plan's chunk id of each sample


def random_resized_boxes(width, height, u, scale, ratio) -> np.ndarray:
    """Crop boxes (x, y, w, h) drawn like torchvision's RandomResizedCrop.get_params.

    Up to 10 attempts per sample (4 uniforms each: area scale, log aspect ratio, top, left),
    then the centre-crop fallback, vectorised over samples. ``u`` is (n, 40) in [0, 1).
    """
    W = np.asarray(width, dtype=np.float64)
    H = np.asarray(height, dtype=np.float64)
    n = len(W)
    area = W * H
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    out = np.zeros((n, 4), dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for a in range(10):
        target = area * (scale[0] + u[:, 4 * a] * (scale[1] - scale[0]))
        aspect = np.exp(lr0 + u[:, 4 * a + 1] * (lr1 - lr0))
        w = np.round(np.sqrt(target * aspect))
        h = np.round(np.sqrt(target / aspect))
        ok = ~done & (w > 0) & (w <= W) & (h > 0) & (h <= H)
        if ok.any():
            top = np.floor(u[:, 4 * a + 2] * (H - h + 1))
            left = np.floor(u[:, 4 * a + 3] * (W - w + 1))
            out[ok] = np.stack([left, top, w, h], axis=1)[ok].astype(np.int64)
            done |= ok
        if done.all():
            break
    if not done.all():
        rest = ~done
        Wr, Hr = W[rest], H[rest]
        in_ratio = Wr / Hr
        w = Wr.copy()
        h = Hr.copy()
        lo = in_ratio < ratio[0]
        hi = in_ratio > ratio[1]
        h[lo] = np.round(Wr[lo] / ratio[0])
        w[hi] = np.round(Hr[hi] * ratio[1])
        out[rest] = np.stack([(Wr - w) // 2, (Hr - h) // 2, w, h], axis=1).astype(np.int64)
    return out


def _snap_even(boxes: np.ndarray) -> np.ndarray:
    """Move boxes onto the 2x2 chroma grid (at most one pixel) so a crop is a plane copy."""
    b = boxes.copy()
    b[:, 0] -= b[:, 0] % 2
    b[:, 1] -= b[:, 1] % 2
    b[:, 2] = np.where(b[:, 2] >= 2, b[:, 2] - b[:, 2] % 2, b[:, 2])
    b[:, 3] = np.where(b[:, 3] >= 2, b[:, 3] - b[:, 3] % 2, b[:, 3])
    return b


class Sampler:
    """What batch k holds: samples from the plan, their frames, crop boxes and flips."""

    def __init__(self, cfg: LoaderConfig, infos, counts: np.ndarray, plan, epoch: int, rows=None):
        self.cfg = cfg
        self.infos = infos
        self.plan = plan
        self.epoch = epoch
        self.width, self.height, self.turn, self.mirror = video_dims(infos, cfg.orientation)
        self.counts = counts
        # The plan's videos are rows: frames [first, first + frames) of a file (the whole file by default).
        if rows is None:
            from ._dataset import Rows

            rows = Rows.whole([""] * len(infos), infos)
        self.row_file, self.row_first, self.row_frames = rows.file, rows.first, rows.frames
        # Consecutive batches a bounded chunk can reach (the scheduler's look-ahead unit).
        self.chunk_window = plan.chunk_window if cfg.sampling == "bounded" else 1
        self.eligible = np.flatnonzero(counts > 0)
        self.cum = np.cumsum(counts[self.eligible])

    def batch(self, k: int) -> _Content:
        vs = np.asarray(self.plan[k], dtype=np.int64)
        views = self.plan.views(k)[:, 1] if self.cfg.views_per_clip > 1 else None
        c = self.content(vs[:, 0], vs[:, 1], views)
        chunks = getattr(self.plan, "chunks", None) if self.chunk_window > 1 else None
        return dataclasses.replace(c, chunk=np.asarray(chunks(k), dtype=np.int64)) if chunks is not None else c

    def content(self, entry: np.ndarray, start: np.ndarray, views=None) -> _Content:
        keys = _rng.sample_keys(entry, start)
        video = self.row_file[entry]
        crops = self.crops(video, keys, views)
        frames = self.frames(entry, start, keys) + self.row_first[entry][:, None]
        return _Content(video, start, frames, crops, self.flips(keys), entry)

    def frames(self, entry, start, keys) -> np.ndarray:
        """Frame indices inside each sample's row (0: the row's first frame)."""
        cfg = self.cfg
        T = cfg.frames_per_sample
        n = self.row_frames[entry]
        if cfg.sample == "frames":
            return start[:, None].copy()
        if cfg.sample == "clips":
            if cfg.fps is None:
                idx = start[:, None] + np.arange(T, dtype=np.int64)[None, :] * cfg.frame_stride
                # Only a row shorter than one sample reaches past its end (short_video).
                return np.minimum(idx, n[:, None] - 1) if cfg.short_video != "wrap" else idx % n[:, None]
            out = np.empty((len(entry), T), dtype=np.int64)
            for i, (e, s) in enumerate(zip(entry.tolist(), start.tolist())):
                out[i] = _clip_frames(self._pts(e), s, T, cfg.fps, wrap=cfg.short_video == "wrap")
            return out
        mode = "center" if cfg.sampling == "sequential" else "random"
        seeds = (_rng.uniforms(cfg.seed, self.epoch, keys, _rng.STREAM_SEGMENTS, 1)[:, 0] * (1 << 53)).astype(np.int64)
        from .plan import segment_indices

        out = np.empty((len(entry), T), dtype=np.int64)
        for i, m in enumerate(n.tolist()):
            out[i] = segment_indices(m, T, seed=int(seeds[i]), mode=mode)
        return out

    def _pts(self, entry: int) -> np.ndarray:
        lo = int(self.row_first[entry])
        return self.infos[int(self.row_file[entry])].pts_seconds[lo : lo + int(self.row_frames[entry])]

    def crops(self, video, keys, views=None) -> np.ndarray:
        """Boxes in coded pixels, chosen on the frames as delivered (displayed, or coded)."""
        cfg = self.cfg
        n = len(video)
        Wc, Hc, turn = self.width[video], self.height[video], self.turn[video]
        turned = (turn == 90) | (turn == 270)
        W, H = np.where(turned, Hc, Wc), np.where(turned, Wc, Hc)
        if cfg.crop == "none":
            return np.zeros((n, 4), dtype=np.int32)
        if cfg.crop in ("center", "three"):
            oh, ow = cfg.size
            wide = W * oh > H * ow
            w = np.where(wide, np.round(H * ow / oh), W).astype(np.int64)
            h = np.where(wide, H, np.round(W * oh / ow)).astype(np.int64)
            # View 0, 1, 2 of crop="three": the start, middle and end of the long side.
            pos = np.ones(n, dtype=np.int64) if views is None else np.asarray(views, dtype=np.int64)
            boxes = np.stack([np.where(wide, (W - w) * pos // 2, 0), np.where(wide, 0, (H - h) * pos // 2), w, h], axis=1)
        else:
            u = _rng.uniforms(cfg.seed, self.epoch, keys, _rng.STREAM_CROP, 40)
            boxes = random_resized_boxes(W, H, u, cfg.scale, cfg.ratio)
        boxes = display_to_coded_boxes(boxes, Wc, Hc, turn, self.mirror[video])
        # Snapped in coded pixels: the chroma grid is the coded frame's.
        return _snap_even(boxes).astype(np.int32)

    def flips(self, keys) -> np.ndarray:
        if not self.cfg.hflip:
            return np.zeros(len(keys), dtype=bool)
        return _rng.uniforms(self.cfg.seed, self.epoch, keys, _rng.STREAM_FLIP, 1)[:, 0] < 0.5

    def replacement(self, key_video: int, key_start: int, attempt: int):
        """Redraw ``attempt`` (1, 2, ...) for the plan's sample (key_video, key_start):
        a uniform sample over all samples, keyed by the original sample only. Returns
        (file, start, frames, crop, flip, row)."""
        if len(self.eligible) == 0:
            raise VideoError("<dataset>", "no usable video is left to draw a replacement sample from")
        u = _rng.uniforms(self.cfg.seed, self.epoch, _rng.sample_keys([key_video], [key_start]), _rng.STREAM_SKIP, 2 * attempt)
        u0, u1 = u[0, 2 * attempt - 2], u[0, 2 * attempt - 1]
        j = int(np.searchsorted(self.cum, u0 * self.cum[-1], side="right"))
        v = int(self.eligible[min(j, len(self.eligible) - 1)])
        s = min(int(u1 * self.counts[v]), int(self.counts[v]) - 1)
        if self.cfg.sample == "segments":
            s = 0
        c = self.content(np.array([v], np.int64), np.array([s], np.int64))
        return int(c.video[0]), s, c.frames[0], c.crop[0], bool(c.flip[0]), v


def _clip_frames(pts_seconds: np.ndarray, start: int, clip_len: int, fps: float, wrap: bool = False) -> np.ndarray:
    """Frames of a clip sampled at ``fps`` from frame ``start``: for j < clip_len, the frame on
    screen at time pts[start] + j / fps (the last frame whose pts <= that time). Past the
    end that is the last frame; with ``wrap`` the video starts over after its duration
    (last pts plus one mean frame interval)."""
    t = pts_seconds[start] + np.arange(clip_len) / fps
    n = len(pts_seconds)
    if wrap and t[-1] > pts_seconds[-1] + _TIME_EPS:
        step = (pts_seconds[-1] - pts_seconds[0]) / (n - 1) if n > 1 else 1.0 / fps
        t = pts_seconds[0] + np.mod(t - pts_seconds[0], pts_seconds[-1] - pts_seconds[0] + step)
    return np.searchsorted(pts_seconds, t + _TIME_EPS, side="right").astype(np.int64) - 1


def _fps_starts(pts_seconds: np.ndarray, clip_len: int, fps: float) -> int:
    """Number of starts whose clip at ``fps`` ends at or before the last frame's timestamp."""
    if len(pts_seconds) == 0:
        return 0
    last = pts_seconds[-1] - (clip_len - 1) / fps + _TIME_EPS
    return int(np.searchsorted(pts_seconds, last, side="right"))

