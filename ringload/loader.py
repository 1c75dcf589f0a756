"""``VideoLoader``: batches of exact frames, clips or segments, decoded by spawned processes.

Data flow: the plan (``ringload.plan``) decides which samples make batch k; this module
turns them into frame indices, crop boxes and flips (a pure function of seed, epoch, rank,
k and the config); the scheduler (``ringload._scheduler``) has decoder processes write the
frames into a slot of the shared-memory ring (``ringload._ring``); the transfer
(``ringload._transfer``) turns a complete slot into the tensor the user receives.

CPU batches are copied out of shared memory before ``__next__`` returns: the user owns
every tensor of a :class:`Batch` and may keep it as long as they like. ``frames`` is a
uint8 tensor in channels-last memory order (a view with shape (B, C, H, W) or
(B, T, C, H, W) over (B, [T,] H, W, C) data); call ``.contiguous()`` for the other order.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
import weakref

from ._batch import Batch, make_batch
from ._config import _MAX_EPOCH, LoaderConfig, _is_int, check_weighted
from ._dataset import check_epoch, digest, load_dataset, settings, with_skip_hint
from ._engine import release as _release
from ._engine import start_engine
from ._epochs import Epochs, resolve_weights
from ._loader_stats import loader_stats
from ._samples import Sampler
from .errors import ConfigError, LoaderStateError, LoaderTimeoutError, VideoError

log = logging.getLogger(__name__)

__all__ = ["Batch", "LoaderConfig", "VideoLoader"]


def _dist_defaults() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class VideoLoader:
    """Iterate batches of frames, clips or segments from many videos.

    ``source``: a directory (recursive), a glob, a list of paths, or a CSV/JSONL manifest
    with ``path`` and optional ``label``/``labels``, ``start``/``end`` (seconds: the row is
    the frames of its file whose timestamps lie in [start, end); rows may share a file)
    and other columns (per sample in ``Batch.meta``). Any of them may be remote (an fsspec
    URL: ``s3://bucket/videos/``, a glob, a manifest or index file in a bucket), and tar
    shards (``.tar``, WebDataset-style: ``KEY.mp4`` with ``KEY.cls``/``KEY.json``/``KEY.txt``)
    stand for their video members. ``storage_options`` go to fsspec (credentials,
    endpoints); each decoder reads through a block cache of ``remote_cache_bytes``, with
    ``remote_retries`` retries of a failed request and ``remote_timeout_s`` per request
    (docs/remote.md); a task's deadline then adds what its reads may take.

    Sampling: ``sample`` is ``"frames"`` (one frame), ``"clips"`` (``clip_len`` frames
    every ``frame_stride``, or at a target ``fps``: frame j is the one on screen at
    ``pts[start] + j / fps``, correct for variable frame rates) or ``"segments"`` (TSN:
    ``num_segments`` frames, one per equal part of the video). ``sampling`` is
    ``"bounded"`` (chunks of ``chunk_len`` consecutive starts, at most ``max_per_chunk``
    per batch; docs/sampling.md), ``"strict"`` (uniform permutation) or ``"sequential"``.
    Bounded ``chunk_len=None`` takes four median GOPs of the data (64 to 256; chunks are
    cut on multiples of the median GOP where it divides the length: on keyframes), and
    ``max_per_chunk=None`` the smallest of 1, 2, 4, 8, 16 whose look-ahead fits the ring
    (docs/sampling.md, "Choosing the defaults"); ``min_effective_batch=E`` instead keeps a
    batch worth at least E independent samples in the worst case (``max_per_chunk =
    batch_size // E``). ``stats()`` reports the values in use, the design-effect bound and
    the effective batch size. ``clips_per_video=k`` makes an epoch k samples of
    every video instead of every start (random, or uniformly spaced in sequential mode).
    Weighted epochs (with ``clips_per_video=k``, strict or bounded): ``weights`` (one number
    >= 0 per video, or the manifest's ``weight`` column; ``weights=False`` ignores it) give
    video v ``k * w_v / mean(w)`` clips per epoch in expectation, 0 leaving it out;
    ``balance="repeat_factor"`` repeats videos of rare classes ``max(1, sqrt(t / f(c)))``
    times (LVIS; ``balance_threshold=t``, default 1 / classes; a video takes the max over its
    labels), ``balance="frequency"`` gives class c a share ``~ n_c ** balance_power`` (default
    0.5; 0: classes equally often). Counts are rounded stochastically per epoch (a video gets
    the floor or the ceiling); ``stats()`` states the epoch's length.
    A video shorter than one sample gets one sample whose frames past the end repeat the
    last frame (``short_video="repeat_last"``), start it over (``"wrap"``), or is left out
    (``"skip"``) or refused (``"error"``); a warning names how many, ``stats()`` counts them.
    ``samples``: your own order instead of a plan (like DataLoader's ``sampler=``): an int
    array (N, 2) of (video, start) pairs (video: the source's row; start: as in
    ``ringload.plan_epoch``) cut into batches in its order, ranks taking contiguous parts
    as in sequential mode; or this rank's batches (a ``ringload.Plan``, or a list of (b, 2)
    arrays); or a callable ``epoch -> either``. Every sample is checked (a ``ConfigError``
    names ``samples``) and they are part of the resume check. ``sampling`` then only picks
    centred (sequential) or random segments.

    Pixels: ``crop`` is ``"random_resized"`` (torchvision's RandomResizedCrop with
    ``scale``/``ratio``), ``"center"`` (largest centred box with the aspect of ``size``),
    ``"three"`` (evaluation: that box on the left, centre and right of the long side, three
    views per clip, ``Batch.crop_index``) or ``"none"`` (whole frame); the box is then resized to ``size=(h, w)`` (swscale's area filter) in the
    same conversion pass. Boxes lie on even coordinates (the chroma grid). A clip shares
    one box and one flip. ``hflip`` flips half the samples.

    Orientation: ``orientation="display"`` (the default) delivers frames the way a video
    player shows them, the pictures you looked at when choosing and labelling the footage:
    phone footage (an iPhone ``.MOV``) carries a display matrix (a turn by 90, 180 or 270
    degrees, perhaps a mirror), and as coded its portrait clips arrive sideways. The
    crop box is chosen on the displayed frame, ``size`` is the displayed size and ``hflip``
    mirrors the displayed frame. ``"coded"`` delivers frames as decoded, unturned.
    Either way a frame equals ``read_frames`` with the same ``orientation``.

    All random choices are keyed by
    (seed, epoch, sample), so batch k is the same for any ``num_workers``, timing or fault.

    Epochs, like ``DataLoader``: every ``iter(loader)`` starts a fresh, whole pass (so
    ``next(iter(loader))`` to peek, or a ``break``, never eats training batches). Without
    ``set_epoch`` each pass takes the next epoch number (0, 1, 2, ...: reshuffled);
    ``set_epoch(e)`` fixes the epoch of every pass until the next ``set_epoch``
    (DistributedSampler's rule). Exact mid-epoch resume is ``load_state_dict``: the next
    pass continues the saved epoch at the saved batch. One pass at a time: an older
    iterator raises :class:`ringload.LoaderStateError`. ``drop_last`` (default False, as
    in DataLoader: nothing is dropped unless asked) drops the short last batch; an epoch
    that would be empty is a ConfigError. ``rank``/``world_size`` default to
    torch.distributed's when it is initialised.

    Resources: ``num_workers`` decoder processes (default: one per usable core, less the
    decoders of other loaders alive in this process; 0 decodes in this process, on the
    loader's thread, with the same batches: for debugging), ``decoder_threads`` FFmpeg
    threads each (default: the cores left per decoder, at least 1; 0 lets FFmpeg choose,
    a thread per core in every decoder, which oversubscribes the cores with several). The ring holds
    ``prefetch_batches + 1`` batch slots in shared memory, or as many as fit in
    ``ring_bytes`` (default 1 GiB): up to 256 batches in strict mode (a deeper window lets
    more samples share one GOP's decode), a chunk's batches plus two per decoder in bounded
    mode, 8 in sequential mode, at least 3. The ring size changes only when and where frames
    are decoded, never what a batch holds. ``on_error="skip"`` quarantines bad files
    (``stats()``) and replaces their samples deterministically; ``"raise"`` raises a
    :class:`ringload.VideoError` (from the constructor for files that cannot be indexed,
    from ``__next__`` at the first batch that needs a file that fails to decode).
    ``timeout_s`` bounds the wait for one batch, ``task_timeout_s`` (plus a share per frame)
    the time a decoder may spend on one task before it is killed and replaced.
    """


    def __init__(
        self,
        source,
        *,
        batch_size: int = 128,
        sample: str = "frames",
        clip_len: int = 1,
        frame_stride: int = 1,
        fps: float | None = None,
        num_segments: int | None = None,
        size: tuple[int, int] | None = (224, 224),
        crop: str = "random_resized",
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = False,
        orientation: str = "display",
        sampling: str = "bounded",
        chunk_len: int | None = None,
        max_per_chunk: int | None = None,
        min_effective_batch: int | None = None,
        clips_per_video: int | None = None,
        weights=None,
        balance: str | None = None,
        balance_threshold: float | None = None,
        balance_power: float | None = None,
        short_video: str = "repeat_last",
        samples=None,
        seed: int = 0,
        num_workers: int | None = None,
        decoder_threads: int | None = None,
        prefetch_batches: int | None = None,
        ring_bytes: int | None = None,
        device="cpu",
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        on_error: str = "raise",
        timeout_s: float = 300.0,
        task_timeout_s: float = 60.0,
        storage_options: dict | None = None,
        remote_cache_bytes: int = 256 << 20,
        remote_retries: int = 3,
        remote_timeout_s: float = 30.0,
    ):
        self.config = cfg = LoaderConfig(
            batch_size=batch_size, sample=sample, clip_len=clip_len, frame_stride=frame_stride, fps=fps,
            num_segments=num_segments, size=size, crop=crop, scale=scale, ratio=ratio, hflip=hflip,
            orientation=orientation, sampling=sampling, chunk_len=chunk_len, max_per_chunk=max_per_chunk,
            min_effective_batch=min_effective_batch, clips_per_video=clips_per_video, balance=balance,
            balance_threshold=balance_threshold, balance_power=balance_power, short_video=short_video, seed=seed,
            num_workers=num_workers, decoder_threads=decoder_threads, prefetch_batches=prefetch_batches,
            ring_bytes=ring_bytes, device=str(device), drop_last=drop_last,
            rank=rank, world_size=world_size, on_error=on_error, timeout_s=timeout_s, task_timeout_s=task_timeout_s,
            remote_cache_bytes=remote_cache_bytes, remote_retries=remote_retries, remote_timeout_s=remote_timeout_s,
        )
        from . import _remote
        from ._source import resolve_source

        _refuse_in_a_spawned_import()
        self._closed = False
        self._finalizer = None
        self._owner_pid = os.getpid()
        if weights is not None and weights is not False:
            check_weighted("weights", cfg)
        # Credentials stay out of the config (its settings are saved with every state_dict).
        storage = _remote.Storage(storage_options, cache_bytes=cfg.remote_cache_bytes, retries=cfg.remote_retries,
                                  timeout_s=cfg.remote_timeout_s)  # fmt: skip
        with _remote.using(storage):
            self.source = resolve_source(source, on_error=cfg.on_error)
            self._load(cfg, weights, samples, storage)

    def _load(self, cfg, weights, samples, storage) -> None:
        weights = resolve_weights(weights, self.source, cfg)
        if cfg.balance is not None and self.source.labels is None:
            raise ConfigError(f"balance={cfg.balance!r} needs labels: a manifest with a 'label' or 'labels' column")
        self._rank, self._world = (cfg.rank, cfg.world_size) if cfg.rank is not None else _dist_defaults()
        self._data = data = load_dataset(cfg, self.source)
        self._paths, self._infos, self._size = data.rows.paths, data.infos, data.size
        self._epoch = 0  # epoch of the current (or last, or resumed) pass
        self._next_batch = 0  # position in it
        self._pinned: int | None = None  # set_epoch(e): every pass is epoch e until the next set_epoch
        self._resume = False  # load_state_dict: the next pass continues (epoch, next_batch)
        self._passes = 0
        self._gen = None  # the scheduler generation of the live pass
        self._epochs = Epochs(cfg, data, self.source.labels, self._rank, self._world, weights, samples)
        plan = self._plan()
        check_epoch(plan, cfg, self._rank, self._world)
        self._settings = settings(cfg, data, self._rank, self._world, weights=weights)
        if samples is not None:
            # Fixed samples are part of the fingerprint; a callable's are checked per epoch (state_dict).
            self._settings["samples"] = self._epochs.samples_digest()
        self._fingerprint = digest(self._settings)
        self._counters = {"batches": 0, "samples": 0, "frames": 0, "wait_s": 0.0, "busy_s": 0.0}
        self._t_first = None
        self._engine = eng = start_engine(cfg, data, plan.chunk_window if cfg.sampling == "bounded" else 1,
                                          storage.settings())
        self._sched, self._transfer = eng.sched, eng.transfer
        self._finalizer = weakref.finalize(self, _release, eng.sched, eng.transfer, eng.ring, self._owner_pid)

    # ------------------------------------------------------------------ epochs

    def _plan(self, epoch: int | None = None):
        return self._epochs.plan(self._epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return len(self._plan())

    @property
    def epoch(self) -> int:
        """The epoch of the current or last pass (or of the pass a restored state resumes)."""
        return self._epoch

    @property
    def paths(self) -> list[str]:
        """Absolute path of every video, in source order (``Batch.video_index`` indexes it)."""
        return list(self._paths)

    @property
    def num_videos(self) -> int:
        return len(self._paths)

    @property
    def classes(self) -> list[str] | None:
        """Class names in id order (manifests with named labels), else None."""
        names = self.source.class_names
        return list(names) if names is not None else None

    @property
    def num_classes(self) -> int:
        """Number of classes (0 without labels)."""
        labels = self.source.labels
        if labels is None:
            return 0
        if self.source.class_names is not None:
            return len(self.source.class_names)
        return int(labels.shape[1]) if labels.ndim == 2 else int(labels.max()) + 1 if len(labels) else 0

    def set_epoch(self, epoch: int) -> None:
        """Make every following pass epoch ``epoch`` (like DistributedSampler.set_epoch).

        After ``load_state_dict``, setting the saved epoch keeps the saved position."""
        if not _is_int(epoch) or not 0 <= epoch <= _MAX_EPOCH:
            raise ConfigError(f"set_epoch({epoch!r}): pass an int in [0, {_MAX_EPOCH}]")
        epoch = int(epoch)
        if not (self._resume and epoch == self._epoch):
            self._resume = False
            self._epoch = epoch
            self._next_batch = 0
        self._pinned = epoch

    def __iter__(self):
        """A fresh, whole pass: the pinned epoch, else the next one (epoch 0 first); after
        ``load_state_dict``, the rest of the saved pass."""
        self._check_open()
        if self._resume:
            first = self._next_batch
        else:
            if self._pinned is not None:
                self._epoch = self._pinned
            elif self._passes:
                self._epoch += 1
            first = 0
        self._resume = False
        self._passes += 1
        plan = self._plan()
        n = len(plan)
        self._next_batch = first
        sampler = Sampler(self.config, self._infos, self._data.counts, plan, self._epoch, self._data.rows)
        gen = self._gen = self._sched.start_epoch(sampler, first, n)
        return self._batches(gen, first, n)

    def _batches(self, gen: int, first: int, n: int):
        for k in range(first, n):
            if gen != self._gen:
                raise LoaderStateError(
                    "this iterator was superseded: iter(loader) was called again, which starts a new pass. "
                    "The loader serves one pass at a time: keep using the newest iterator"
                )
            batch = self._fetch(gen, k)
            self._next_batch = k + 1
            yield batch

    def _fetch(self, gen: int, k: int) -> Batch:
        self._check_open()
        cfg = self.config
        t0 = time.perf_counter()
        if self._t_first is None:
            self._t_first = t0
        deadline = t0 + cfg.timeout_s
        while True:
            for slot in self._transfer.reclaim(0.0):
                self._sched.release(slot)
            # Slots still being copied to a device come back through reclaim(): look again soon.
            step = 0.01 if self._transfer.in_flight() else 0.5
            try:
                done = self._sched.wait(gen, k, min(step, max(0.0, deadline - time.perf_counter())))
                break
            except VideoError as exc:
                raise with_skip_hint(exc) from None
            except concurrent.futures.CancelledError:
                if self._closed:
                    raise LoaderStateError(
                        f"the loader was closed (close() was called, perhaps from another thread) while batch {k} "
                        f"of epoch {self._epoch} was awaited"
                    ) from None
                raise
            except concurrent.futures.TimeoutError:
                if time.perf_counter() >= deadline:
                    raise LoaderTimeoutError(
                        f"batch {k} of epoch {self._epoch} was not ready after timeout_s={cfg.timeout_s:g} s "
                        f"(decoders: {self._sched.snapshot()['decoders']}); raise timeout_s for very slow files"
                    ) from None
        self._counters["wait_s"] += time.perf_counter() - t0
        batch = make_batch(self, done, self._plan(), k)
        for slot in self._transfer.reclaim(0.0):
            self._sched.release(slot)
        c = self._counters
        c["batches"] += 1
        c["samples"] += len(batch)
        c["frames"] += int(done.frames.size)
        c["busy_s"] = time.perf_counter() - self._t_first
        return batch

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Where the loader stands: batch ``next_batch`` of ``epoch`` comes next (``load_state_dict``)."""
        extra = {}
        if self._epochs.from_callable:
            extra["samples_digest"] = self._plan().digest()
        return {
            **extra,
            "version": _STATE_VERSION,
            "seed": self.config.seed,
            "epoch": self._epoch,
            "next_batch": self._next_batch,
            "pinned_epoch": self._pinned,
            "fingerprint": self._fingerprint,
            "settings": self._settings,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next pass yields exactly the rest of the saved pass (a state saved
        after a whole pass resumes with the pass that would have followed)."""
        epoch, nxt, pinned = _check_state(state, self._settings, self._fingerprint)
        if self._epochs.from_callable and state.get("samples_digest") != self._plan(epoch).digest():
            raise ConfigError(
                f"load_state_dict: samples({epoch}) returns another list than the one the state was saved with; "
                "pass a samples callable that gives the same list for the same epoch"
            )
        self._epoch, self._next_batch = int(epoch), int(nxt)
        self._pinned = int(pinned) if pinned is not None else None
        self._passes = 1
        # A pass that had ended resumes as the pass that follows it.
        self._resume = self._next_batch < len(self._plan())

    # ------------------------------------------------------------------ reporting and teardown

    def stats(self) -> dict:
        """Counters since the loader was built.

        ``batches``, ``samples``, ``frames`` delivered; ``seconds`` since the first request
        and ``images_per_s``/``samples_per_s`` over it; ``wait_s`` the consumer spent waiting;
        ``ring_bytes`` = ``num_slots`` x ``slot_bytes`` (all the shared memory there is);
        ``ready_batches`` decoded and waiting in the ring;
        ``window_batches`` the look-ahead in batches; ``num_workers``, ``decoder_threads``,
        ``decoder_pids``, ``decoders`` (id, pid, ready, whether torch was
        imported in it: never); ``decoded_frames`` (frames the decoders produced,
        including those walked from a keyframe) and ``tasks``; ``decoder_busy_s`` and
        ``decoder_idle_s`` summed over decoders; ``decoder_restarts`` (deaths and kills)
        and ``hung_decoders_killed``; ``failed_samples``, ``replaced_samples`` and
        ``quarantined`` ({path: reason}) for bad files (and "manifest: line N" for rows whose
        range holds no frame); ``sampling`` ("samples" with ``samples=``), and the ``chunk_len``,
        ``max_per_chunk`` and ``cut_grid`` (chunk cuts on multiples of it) in use (bounded
        mode, else None) with ``bounded_rule`` (why those);
        ``design_effect_bound`` (a batch mean's variance against strict sampling is at most
        this, ``1 + (m - 1) * rho`` at the worst case rho = 1, m samples of one chunk or video
        per batch: 1 in strict mode) and ``effective_batch_size`` (``batch_size`` divided by
        it; ``ringload.effective_batch_size`` for another rho); ``short_videos`` (videos shorter
        than one sample) and the ``short_video`` policy applied to them; ``epoch_samples``
        (samples of the current epoch over all ranks) and ``expected_epoch_samples`` (its mean
        over epochs: they differ with ``weights``/``balance``, ``weighted``), ``balance``;
        ``remote``: the decoders' reads of remote objects and shard members (``bytes_fetched``,
        ``requests``, ``retries``, ``cache_hits``, ``cache_misses``, ``header_hits``,
        ``gop_bytes``: the bytes of the GOPs their tasks asked for; ``ahead_requests``: those of
        ``requests`` made for a task while the one before it decoded) and ``cache_bytes``.
        """
        return loader_stats(self)

    def _check_open(self) -> None:
        if self._closed:
            raise LoaderStateError("this VideoLoader is closed; build a new one")
        if os.getpid() != self._owner_pid:
            raise LoaderStateError(
                f"this VideoLoader belongs to process {self._owner_pid}; a process made by fork() cannot use it: "
                "build a new VideoLoader in the child (or start the child with the 'spawn' method)"
            )

    def close(self) -> None:
        """Stop the decoders and free the ring (idempotent; also runs when the loader is collected)."""
        if self._closed:
            return
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()
        self._engine.slot_tensors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"VideoLoader({len(self._paths)} videos, sample={c.sample!r}, sampling={c.sampling!r}, "
            f"batch_size={c.batch_size}, size={self._size}, epoch={self._epoch}, rank={self._rank}/{self._world})"
        )


_STATE_VERSION = 2


def _check_state(state, settings: dict, fingerprint: str) -> tuple[int, int, int | None]:
    """(epoch, next_batch, pinned epoch) of a state this loader can resume, else a ConfigError saying why."""
    try:
        version = state["version"]
        epoch, nxt, pinned, fp = (state[k] for k in ("epoch", "next_batch", "pinned_epoch", "fingerprint"))
    except (KeyError, TypeError):
        raise ConfigError("load_state_dict: pass a dict made by VideoLoader.state_dict()") from None
    if version != _STATE_VERSION:
        raise ConfigError(
            f"load_state_dict: state version {version} is not supported (this ringload writes and reads "
            f"version {_STATE_VERSION}); it was saved by another ringload version"
        )
    if fp != fingerprint:
        saved = state.get("settings") or {}
        diff = [f"{k}: saved {saved.get(k)!r}, this loader {v!r}" for k, v in settings.items() if saved.get(k) != v]
        raise ConfigError(
            "load_state_dict: the state was saved by a loader with other settings or data ("
            + ("; ".join(diff) or "unknown differences")
            + "); build the loader with the same arguments and videos"
        )
    if not (_is_int(epoch) and _is_int(nxt) and 0 <= epoch <= _MAX_EPOCH and nxt >= 0):
        raise ConfigError("load_state_dict: the state's epoch or next_batch is invalid")
    if pinned is not None and not (_is_int(pinned) and 0 <= pinned <= _MAX_EPOCH):
        raise ConfigError("load_state_dict: the state's pinned_epoch is invalid")
    return int(epoch), int(nxt), pinned


def _refuse_in_a_spawned_import() -> None:
    """In a process spawned by multiprocessing that is still importing the parent's main
    module, building a loader means the script lacks its main guard: say so in one line and
    exit with a code the parent recognises, instead of multiprocessing's long traceback."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        log.critical("ringload: a VideoLoader was built while a spawned process imported __main__ (missing main guard)")
        from .probe import MAIN_GUARD_EXIT

        os._exit(MAIN_GUARD_EXIT)
