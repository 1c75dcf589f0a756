"""The peer contenders: torchcodec (exact and approximate seek), decord and SPDL.

They run in another interpreter (``ringload bench --peer-python PATH``, built by
``bench/peers_env.sh``): PyPI's torchcodec links a CUDA build of torch and does not load
beside the CPU torch ringload pins. That interpreter has torch, numpy and the peers, but not
ringload's dependencies (PyAV, ringload's numpy and torch builds), so this module and the
harness modules it uses (``measure``, ``contenders``, ``procfs``, ``rounds``, ``_json``) import
only the standard library at module level; ``peer_child.py`` loads them by path as a package
of their own, without ``ringload/__init__.py``. The measuring loop is ``measure.measure``, the
same one every other contender runs in, so the accounting (images/s over timed windows, CPU
of the process tree, peak RSS/PSS, first batch) is the same.

The job is the one ringload's decoders do: uniform random frames (or clips) from all files,
batch ``batch_size``, each frame cropped to the box ringload's ``random_resized`` crop draws
and resized to ``size`` x ``size`` RGB uint8, with ``workers`` processes. At scale (0.9, 1)
and ratio (3/4, 4/3) every attempt of that rule fails on a frame wider than 4:3, so the box
is torchvision's centre-crop fallback, the same for every frame of a video: ``crop_box``.
On 16:9 video (the generated data) peers and ringload crop the same pixels; each peer does
crop and resize where its documentation puts them:

- ``torchcodec-exact`` / ``-approx``: one ``VideoDecoder(seek_mode=...)`` per file with the
  decoder transforms ``CenterCrop`` + ``Resize`` (done in FFmpeg before conversion to RGB)
  and one batched ``get_frames_at(indices)`` per video per batch; clips with
  ``torchcodec.samplers.clips_at_random_indices``;
- ``decord``: ``VideoReader(width, height)`` resizes in the decoder (to the size whose centre
  ``size`` x ``size`` is the crop box scaled), one ``get_batch(indices)`` per video per batch;
- ``spdl``: ``spdl.io.demux_video`` once per opened file, then ``spdl.io.sample_decode_video(packets,
  indices, filter_desc=...)`` per video per batch with ``crop`` and ``scale`` in the filter
  graph (FFmpeg filter syntax, as ``spdl.io.get_video_filter_desc`` writes it).

Each worker keeps ``CACHE_FILES`` files open (least recently used), as ringload's decoders
keep a few; one FFmpeg thread per worker everywhere, as ringload's decoders use.
"""

from __future__ import annotations

import bisect
import collections
import os
import sys

from .contenders import PEER_KINDS, Contender, Skip

try:  # both interpreters have a torch (the project's CPU build, the peer venv's own)
    from torch.utils.data import IterableDataset as _Dataset
except ImportError:  # pragma: no cover - the peers cannot run without torch anyway
    _Dataset = object

#: Peer contender names, in their default order.
PEERS = PEER_KINDS
#: The script the peer interpreter runs (by path: it must not import ``ringload``).
CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_child.py")
#: Files each worker keeps open (decoders, demuxed packets), least recently used first out.
CACHE_FILES = 8
#: What the peer interpreter reports about itself (``peer_child.py --versions``).
VERSION_MODULES = ("torch", "numpy", "torchcodec", "decord", "spdl.io")


def enable_hint() -> str:
    """The one-line command that builds the peer interpreter and runs the peers."""
    return ("bash bench/peers_env.sh && ringload bench --peer-python "
            "~/.cache/ringload/peers-venv/bin/python")  # fmt: skip


def crop_box(width: int, height: int, ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(x, y, w, h): torchvision's RandomResizedCrop fallback, the centre box with its aspect
    ratio clamped to ``ratio``; what ringload's ``random_resized`` crop gives at scale (0.9, 1)
    whenever ``width / height`` is outside ``ratio`` (every attempt then fails)."""
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


class PeerBatches(_Dataset):
    """IterableDataset-like: endless batches of uniform random frames (or clips), one batched
    read per video per batch; a subclass opens a file (``_open``) and reads indices from it
    (``_read``: (N, C, size, size) uint8) or draws clips with the library's sampler (``_clips``).

    ``lengths`` and ``frame_sizes`` ((width, height) per file) come from ringload's index,
    computed by the parent and passed in the spec, so that peers draw from the same frames as
    ringload and are not charged for probing files.
    """

    library = "?"

    def __init__(self, paths, lengths, frame_sizes, *, batch_size, size, seed, clip_len=1, frame_stride=1,
                 seek_mode=None):
        if not len(paths) == len(lengths) == len(frame_sizes):
            raise ValueError(f"{len(paths)} paths, {len(lengths)} frame counts, {len(frame_sizes)} frame sizes")
        self.paths = list(paths)
        self.lengths = [int(n) for n in lengths]
        self.boxes = {p: crop_box(int(w), int(h)) + (int(w), int(h)) for p, (w, h) in zip(self.paths, frame_sizes)}
        self.batch_size = batch_size
        self.size = size
        self.seed = seed
        self.clip_len = clip_len
        self.frame_stride = frame_stride
        self.seek_mode = seek_mode
        self.span = (clip_len - 1) * frame_stride + 1  # frames a clip covers
        if max(self.lengths) < self.span:
            raise ValueError(f"no video holds a clip of {clip_len} frames at stride {frame_stride}")
        self.opened = 0

    # --- what a library provides ---------------------------------------------------------

    def _open(self, path):
        raise NotImplementedError

    def _read(self, handle, indices: list[int]):
        raise NotImplementedError

    def _clips(self, handle, starts: list[int]):
        """(len(starts), clip_len, C, size, size); by default the frames of each clip read at once."""
        idx = [s + t * self.frame_stride for s in starts for t in range(self.clip_len)]
        data = self._read(handle, idx)
        return data.reshape(len(starts), self.clip_len, *data.shape[1:])

    # --- the sampling and the batch ------------------------------------------------------

    def _handle(self, cache, path):
        handle = cache.pop(path, None)
        if handle is None:
            handle = self._open(path)
            self.opened += 1
            while len(cache) >= CACHE_FILES:
                cache.pop(next(iter(cache)))
        cache[path] = handle  # most recently used last
        return handle

    def draws(self, rng):
        """Endless lists of (video, [start, ...]) per batch: ``batch_size`` uniform draws over
        every clip start of every video (every frame for frames), grouped by video."""
        starts = [max(0, n - self.span + 1) for n in self.lengths]
        cum, total = [], 0
        for n in starts:
            total += n
            cum.append(total)
        while True:
            picks = collections.defaultdict(list)
            order = []
            for _ in range(self.batch_size):
                flat = rng.randrange(total)
                v = bisect.bisect_right(cum, flat)
                picks[v].append(flat - (cum[v - 1] if v else 0))
                order.append(v)
            yield order, picks

    def __iter__(self):
        import random

        import torch

        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        rng = random.Random(self.seed * 1_000_003 + wid)
        torch.manual_seed(self.seed * 1_000_003 + wid)  # torchcodec's clip sampler draws from torch
        cache: collections.OrderedDict = collections.OrderedDict()
        for order, picks in self.draws(rng):
            shape = (self.batch_size, 3, self.size, self.size)
            if self.clip_len > 1:
                shape = (self.batch_size, self.clip_len, 3, self.size, self.size)
            out = torch.empty(shape, dtype=torch.uint8)
            slot = 0
            for v, starts in picks.items():
                handle = self._handle(cache, self.paths[v])
                data = self._clips(handle, starts) if self.clip_len > 1 else self._read(handle, starts)
                out[slot : slot + len(starts)] = data
                slot += len(starts)
            yield out


class TorchcodecBatches(PeerBatches):
    library = "torchcodec"

    def _open(self, path):
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import CenterCrop, Resize

        x, y, w, h, width, height = self.boxes[path]
        transforms = [CenterCrop((h, w)), Resize((self.size, self.size))]
        return VideoDecoder(path, seek_mode=self.seek_mode, num_ffmpeg_threads=1, transforms=transforms)

    def _read(self, handle, indices):
        n = len(handle)
        return handle.get_frames_at(indices=[min(i, n - 1) for i in indices]).data  # (N, C, H, W) uint8

    def _clips(self, handle, starts):
        from torchcodec.samplers import clips_at_random_indices

        # The library's sampler draws its own starts, uniform over the video, one call per video.
        clips = clips_at_random_indices(handle, num_clips=len(starts), num_frames_per_clip=self.clip_len,
                                        num_indices_between_frames=self.frame_stride)  # fmt: skip
        return clips.data  # (num_clips, clip_len, C, H, W)


class DecordBatches(PeerBatches):
    library = "decord"

    def _open(self, path):
        import decord

        x, y, w, h, width, height = self.boxes[path]
        # Resize in the decoder so that the crop box becomes size x size, then cut its centre.
        sw, sh = round(width * self.size / w), round(height * self.size / h)
        reader = decord.VideoReader(path, num_threads=1, width=sw, height=sh)
        return reader, (sw - self.size) // 2, (sh - self.size) // 2

    def _read(self, handle, indices):
        import torch

        reader, x0, y0 = handle
        n = len(reader)
        frames = reader.get_batch([min(i, n - 1) for i in indices]).asnumpy()  # (N, H, W, C)
        crop = frames[:, y0 : y0 + self.size, x0 : x0 + self.size]
        return torch.from_numpy(crop).permute(0, 3, 1, 2)


class SpdlBatches(PeerBatches):
    library = "spdl"

    def _open(self, path):
        import spdl.io

        packets = spdl.io.demux_video(path)
        x, y, w, h, width, height = self.boxes[path]
        # Written out: get_video_filter_desc puts its own filter_desc after the scale, and a
        # crop box in source pixels must come before it.
        filter_desc = f"crop={w}:{h}:{x}:{y},scale={self.size}:{self.size}:flags=bilinear,format=pix_fmts=rgb24"
        return packets, filter_desc, spdl.io.decode_config(decoder_options={"threads": "1"})

    def _read(self, handle, indices):
        import spdl.io

        packets, filter_desc, cfg = handle
        n = len(packets)
        # sample_decode_video takes the packets over (the object is relinquished): keep the
        # demuxed file and hand it a copy (VideoPackets.clone) per call.
        wanted = [min(i, n - 1) for i in indices]
        # sample_decode_video takes sorted unique indices; map the batch's draws back to them.
        unique = sorted(set(wanted))
        frames = spdl.io.sample_decode_video(packets.clone(), unique, decode_config=cfg, filter_desc=filter_desc)
        data = spdl.io.to_torch(spdl.io.convert_frames(frames)).permute(0, 3, 1, 2)  # (N, C, H, W)
        pos = {f: k for k, f in enumerate(unique)}
        return data[[pos[f] for f in wanted]]


LIBRARIES = {
    "torchcodec-exact": (TorchcodecBatches, "exact", "torchcodec.decoders"),
    "torchcodec-approx": (TorchcodecBatches, "approximate", "torchcodec.decoders"),
    "decord": (DecordBatches, None, "decord"),
    "spdl": (SpdlBatches, None, "spdl.io"),
}


def make_peer(spec, paths):
    """The factory of every peer (``measure.measure`` calls it in the peer interpreter)."""
    import importlib

    cls, seek_mode, module = LIBRARIES[spec["kind"]]
    try:
        lib = importlib.import_module(module)
    except Exception as exc:  # the peer is missing from the peer interpreter: say which, go on
        raise Skip(f"{module} does not import in {sys.executable} ({type(exc).__name__}: {exc}); "
                   "bash bench/peers_env.sh installs it") from None  # fmt: skip
    import torch

    dataset = cls(paths, spec["num_frames"], spec["frame_sizes"], batch_size=spec["batch_size"], size=spec["size"], seed=spec["seed"],
                  clip_len=spec.get("clip_len", 1), frame_stride=spec.get("frame_stride", 1),
                  seek_mode=seek_mode)  # fmt: skip
    workers = spec["workers"]
    # DataLoader's default start method (fork on Linux), as a user of these libraries gets it.
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    how = {
        "torchcodec": f"VideoDecoder(seek_mode={seek_mode!r}, transforms=[CenterCrop, Resize]).get_frames_at"
                      + (", clips_at_random_indices" if spec.get("clip_len", 1) > 1 else ""),
        "decord": "VideoReader(width, height).get_batch",
        "spdl": "sample_decode_video(filter_desc=crop,scale)",
    }[cls.library]  # fmt: skip
    note = (f"{how}; {workers} DataLoader worker processes, one read per video per batch, "
            f"{CACHE_FILES} files open per worker")  # fmt: skip
    # Only this peer's library is imported in its process: decord ships its own FFmpeg, and
    # two libraries' FFmpeg bindings in one process can break each other.
    info = {"note": note, "shm_bytes": None, "peer_python": sys.executable,
            "peer_version": str(getattr(lib, "__version__", None))}  # fmt: skip
    # A DataLoader holds prefetch_factor (2) batches per worker ready.
    return Contender(loader, info=info, buffered=2 * max(1, workers))


def versions() -> dict:
    """Versions of the peer interpreter's Python and libraries (None: does not import); each
    library is imported in a process of its own (``peer_child.py --versions`` runs this, not a
    contender's process)."""
    import platform
    import subprocess

    out = {"python": platform.python_version(), "executable": sys.executable}
    for name in VERSION_MODULES:
        code = f"import {name}; print({name}.__version__)"
        try:
            got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            out[name] = got.stdout.strip() if got.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            out[name] = None
    return out


FACTORIES = {name: make_peer for name in PEERS}

