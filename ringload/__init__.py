"""ringload: video frames and clips for PyTorch training at sequential decoding speed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConfigError,
    DecodeError,
    FrameIndexError,
    LoaderTimeoutError,
    NoVideoStreamError,
    RingloadError,
    VideoError,
    VideoOpenError,
    WorkerError,
)

try:
    __version__ = version("ringload")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = sorted(
    [
        "ConfigError",
        "DecodeError",
        "FrameIndexError",
        "LoaderTimeoutError",
        "NoVideoStreamError",
        "RingloadError",
        "VideoError",
        "VideoOpenError",
        "WorkerError",
    ]
)
