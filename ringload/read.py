"""``read_frames()``: exact frames by index from one video, as a uint8 tensor."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError, DecodeError


@dataclasses.dataclass(frozen=True, eq=False)
class Frames:
    """Frames read from one video.

    ``data``: torch.uint8 (N, 3, H, W) RGB; ``pts_seconds``: torch.float64 (N,);
    ``indices``: the frame indices asked for (int64 numpy array, same order);
    ``decoded_frames``: how many frames were decoded to serve the call.
    """

    data: object
    pts_seconds: object
    indices: np.ndarray
    decoded_frames: int


def _check_size(size):
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"read_frames(size={size!r}): pass (height, width) or None") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"read_frames(size={size!r}): height and width must be positive")
    return h, w


def _check_crop(crop, info, orientation):
    """The box in coded pixels, for a box on the frame as delivered."""
    if crop is None:
        return None
    from ._videoinfo import display_to_coded_boxes

    try:
        x, y, w, h = (int(v) for v in crop)
    except (TypeError, ValueError):
        raise ConfigError(f"read_frames(crop={crop!r}): pass (x, y, width, height) or None") from None
    fh, fw = info.size(orientation)
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > fw or y + h > fh:
        raise ConfigError(f"read_frames(crop={crop!r}): the box does not fit in the {fw}x{fh} frame")
    rot, flip = info.orient(orientation)
    return tuple(int(v) for v in display_to_coded_boxes([[x, y, w, h]], info.width, info.height, rot, flip)[0])


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    stream: int | None = None,
    threads: int = 0,
    orientation: str = "display",
    crop: tuple[int, int, int, int] | None = None,
    storage_options: dict | None = None,
) -> Frames:
    """Read frames ``indices`` (any order, repeats allowed) of ``path``, exactly.

    Frame i is the i-th frame of a full decode in presentation order, with the pixels of
    ``frame.to_ndarray(format="rgb24")`` (resized to ``size=(height, width)`` when given,
    area-averaging). ``orientation="display"`` turns (and mirrors) them as the file's
    display matrix says, like a video player (``size`` is then the displayed size);
    ``"coded"`` leaves them as decoded. ``crop=(x, y, w, h)`` cuts that box of the frame
    as delivered (after the turn) before the resize, as the loader's crop boxes do (its
    boxes lie on even coordinates). Each GOP is decoded at most once per call.
    ``path`` may be an fsspec URL or a tar member (``tar://a.mp4::shard.tar``), read with
    ``storage_options``. Out-of-range indices raise :class:`ringload.FrameIndexError`.
    """
    from . import _remote

    storage = _remote.Storage(storage_options) if storage_options is not None else None
    with _remote.using(storage):
        return _read_frames(path, indices, size=size, stream=stream, threads=threads, orientation=orientation,
                            crop=crop)  # fmt: skip


def _read_frames(path, indices, *, size, stream, threads, orientation, crop) -> Frames:
    import torch

    from ._decode import VideoReader, as_indices, convert_into
    from .probe import ORIENTATIONS, probe

    size = _check_size(size)
    if not isinstance(orientation, str) or orientation not in ORIENTATIONS:
        raise ConfigError(f"read_frames(orientation={orientation!r}): pass one of {', '.join(map(repr, ORIENTATIONS))}")
    info = probe(path, stream=stream)
    idx = as_indices(indices, path).copy()
    orient = info.orient(orientation)
    coded_crop = _check_crop(crop, info, orientation)
    h, w = size if size is not None else (crop[3], crop[2]) if crop is not None else info.size(orientation)
    out = np.empty((len(idx), h, w, 3), dtype=np.uint8)
    with VideoReader(info.path, info, threads=threads) as reader:

        def sink(pos, frame):
            if size is None and (frame.height, frame.width) != (info.height, info.width):
                raise DecodeError(
                    info.path,
                    f"frame {int(idx[pos])} is {frame.width}x{frame.height} but the video starts at "
                    f"{info.width}x{info.height}",
                    hint="pass size=(height, width) to resize every frame to one size",
                )
            convert_into(frame, out[pos], crop=coded_crop, size=size, orient=orient)

        reader.decode(idx, sink)
        decoded = reader.decoded_frames
    data = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    pts = torch.from_numpy(np.ascontiguousarray(info.pts_seconds[idx])) if len(idx) else torch.zeros(0, dtype=torch.float64)
    idx.flags.writeable = False
    return Frames(data=data, pts_seconds=pts, indices=idx, decoded_frames=decoded)
