"""Typed errors. Every error names what failed and, where a setting can fix it, which one."""

from __future__ import annotations

import os


class RingloadError(Exception):
    """Base class of every error ringload raises on purpose."""


class ConfigError(RingloadError, ValueError):
    """An argument has a value ringload cannot use; the message names the argument."""


class VideoError(RingloadError):
    """A video file cannot be used. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str, *, hint: str | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.hint = hint
        msg = f"{self.path}: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __reduce__(self):
        # Keeps the subclass and fields when the error crosses a process boundary.
        return (_rebuild_video_error, (type(self), self.path, self.reason, self.hint))


def _rebuild_video_error(cls, path, reason, hint):
    return cls(path, reason, hint=hint)


class VideoOpenError(VideoError):
    """The file is missing, empty, unreadable or not a container FFmpeg understands."""


class VideoChangedError(VideoOpenError):
    """The file is not the one that was indexed: its size or modification time differs."""


class RemoteReadError(VideoOpenError):
    """Bytes of a remote object could not be read: the request failed on every retry or ran
    past its timeout. ``path`` is the URL; the reason names the byte range and the last error."""


class NoVideoStreamError(VideoError):
    """The container holds no (decodable) video stream, or the chosen stream is not video."""


class DecodeError(VideoError):
    """Frames that the index promised could not be decoded."""


class FrameIndexError(VideoError, IndexError):
    """A frame index lies outside the frames that really decode."""


class LoaderStateError(RingloadError, RuntimeError):
    """The loader cannot do this now: it is closed, or this process is a fork of its owner."""


class WorkerError(RingloadError):
    """A decoder process failed in a way that replacing it did not fix."""


class LoaderTimeoutError(RingloadError, TimeoutError):
    """A wait inside the loader ran past its timeout."""
