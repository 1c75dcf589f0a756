"""ringload: video frames and clips for PyTorch training at sequential decoding speed."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConfigError,
    DecodeError,
    FrameIndexError,
    LoaderStateError,
    LoaderTimeoutError,
    NoVideoStreamError,
    RemoteReadError,
    RingloadError,
    VideoChangedError,
    VideoError,
    VideoOpenError,
    WorkerError,
)

try:
    __version__ = version("ringload")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Public names that live in heavier modules are imported on first use, so that
# `import ringload` (in a decoder process, or for the CLI) stays cheap.
_LAZY = {
    # "name": "module",  one line per public name, grouped by module
    "Frames": ".read",
    "read_frames": ".read",
    "Plan": ".plan",
    "plan_epoch": ".plan",
    "segment_indices": ".plan",
    "Batch": ".loader",
    "average_per_video": "._views",
    "effective_batch_size": "._bounded",
    "VideoLoader": ".loader",
}

# `probe` names both a module and the function it defines. Importing it here binds the
# package attribute to the function for good; with a lazy import, any later
# `from ringload.probe import ...` would rebind `ringload.probe` to the module.
from .probe import VideoInfo, probe  # noqa: E402

__all__ = sorted(
    [
        "VideoInfo",
        "probe",
        "ConfigError",
        "DecodeError",
        "FrameIndexError",
        "LoaderStateError",
        "LoaderTimeoutError",
        "NoVideoStreamError",
        "RemoteReadError",
        "RingloadError",
        "VideoChangedError",
        "VideoError",
        "VideoOpenError",
        "WorkerError",
        *_LAZY,
    ]
)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ringload' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
