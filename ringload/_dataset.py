"""The dataset a loader reads: its videos' indexes and how many samples each one holds.

``load_dataset`` resolves nothing itself (the source is already resolved): it indexes every
video (in parallel when there are many; bad files raise or are quarantined), logs the
files that decode fewer frames than they claim, and derives what the plan needs: the
valid starts per video, the bounded chunk length from the data's GOPs, the output size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from ._config import LoaderConfig
from ._samples import _fps_starts
from .errors import ConfigError, VideoError
from .probe import short_files_warning

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """``infos[i]`` is None for a quarantined video; ``counts`` are its valid starts and
    ``plan_lengths`` what ``plan_epoch`` is given; ``chunk_len`` and ``max_per_chunk`` the
    bounded values in use and ``bounded`` why (``ringload._bounded``; outside bounded mode
    the settings as given, ``bounded`` None); ``size`` the output (h, w);
    ``short`` the videos shorter than one sample (``short_video`` says what they get).
    ``paths`` and ``infos`` are the index's files; ``rows`` maps the plan's videos (the
    source's rows: a trimmed manifest row is a segment of a file) to them, and ``counts``,
    ``plan_lengths`` and ``short`` are per row."""

    paths: list[str]
    infos: list
    quarantined: dict[str, str]
    counts: np.ndarray
    plan_lengths: np.ndarray
    chunk_len: int | None
    size: tuple[int, int]
    max_per_chunk: int | None = None
    bounded: object = None  # _bounded.BoundedDefaults in bounded mode
    index: object = None  # the mapped _indexfile.IndexFile every decoder maps too
    short: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=bool))
    rows: Rows | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Rows:
    """The plan's videos: row r is frames ``first[r]`` to ``first[r] + frames[r] - 1`` of
    file ``file[r]`` (``paths[r]`` its path); ``trimmed``: the source gave ranges."""

    file: np.ndarray
    first: np.ndarray
    frames: np.ndarray
    paths: list[str]
    trimmed: bool = False

    def __len__(self) -> int:
        return len(self.file)

    @staticmethod
    def whole(paths: list[str], infos) -> Rows:
        """One row per file, all its frames."""
        if hasattr(infos, "column"):
            n = np.where(infos.column("ok") != 0, infos.column("num_frames"), 0).astype(np.int64)
        else:  # a list of VideoInfo (None: quarantined)
            n = np.array([0 if i is None else i.num_frames for i in infos], dtype=np.int64)
        return Rows(np.arange(len(paths), dtype=np.int64), np.zeros(len(paths), dtype=np.int64), n, list(paths))


def load_dataset(cfg: LoaderConfig, source) -> Dataset:
    """The dataset of a resolved source. An index file (``ringload index --out``) is used as
    mapped; any other source is indexed here (through the per-file cache) into a temporary
    index file, so decoders always look videos up in a mapped file."""
    from ._indexfile_write import temporary_index

    quarantined: dict[str, str] = {}
    index = getattr(source, "index", None)
    segments = getattr(source, "segments", None)
    row_file = None
    if index is None:
        from . import _remote

        paths = row_paths = [_remote.normalize(p) for p in source.paths]
        ranges = source.member_ranges() if hasattr(source, "member_ranges") else None
        members = {p: m for p, m in zip(row_paths, ranges) if m is not None} if ranges is not None else {}
        if segments is not None:
            # Rows of one file share its index entry (and its decodes).
            first_row: dict[str, int] = {}
            row_file = np.array([first_row.setdefault(p, len(first_row)) for p in row_paths], dtype=np.int64)
            paths = list(first_row)
        index = temporary_index(_index(cfg, paths, quarantined, [members.get(p) for p in paths]))
    else:
        paths = source.paths  # absolute, as the build wrote them
        _failed_rows(cfg, index, quarantined)
    infos = index.infos()
    rows = Rows.whole(paths, infos) if row_file is None else _trimmed_rows(cfg, source, row_paths, row_file, infos, quarantined)
    ok = index.column("ok").astype(bool)
    short = np.flatnonzero(ok & (index.column("container_frames") > index.column("num_frames")))
    warning = short_files_warning([infos[int(i)] for i in short])
    if warning is not None:
        log.warning("%s", warning)  # every time a loader is built, cached index or not
    counts, lengths = _sample_counts(cfg, infos, rows)
    short = _short_videos(cfg, rows, counts, lengths)
    if not counts.any():
        raise ConfigError(
            f"no video in source has a full sample (sample={cfg.sample!r}, clip_len={cfg.clip_len}, "
            f"frame_stride={cfg.frame_stride}, fps={cfg.fps}); {len(quarantined)} files are unusable"
        )
    used = np.bincount(rows.file[counts > 0], minlength=len(paths)) > 0
    size = _output_size(cfg, infos, used)
    bounded = _bounded_defaults(cfg, infos, size, rows)
    return Dataset(
        paths, infos, quarantined, counts, lengths,
        bounded.chunk_len if bounded else cfg.chunk_len, size,
        max_per_chunk=bounded.max_per_chunk if bounded else cfg.max_per_chunk, bounded=bounded,
        index=index, short=short, rows=rows,
    )


# Slack when a range's bounds are compared with frame timestamps (float seconds).
_RANGE_EPS = 1e-6


def _trimmed_rows(cfg: LoaderConfig, source, row_paths: list[str], row_file: np.ndarray, infos,
                  quarantined: dict[str, str]) -> Rows:
    """Each row's frames: those of its file whose timestamps lie in [start, end). A range
    that holds no frame raises a ConfigError naming the manifest line, or with
    ``on_error="skip"`` the row is left out (``quarantined``, keyed by its line)."""
    seg = source.segments
    first = np.zeros(len(row_file), dtype=np.int64)
    frames = np.zeros(len(row_file), dtype=np.int64)
    ok = infos.column("ok") != 0
    order = np.argsort(row_file, kind="stable")
    bounds = np.flatnonzero(np.diff(row_file[order])) + 1
    for group in np.split(order, bounds):
        f = int(row_file[group[0]])
        if not ok[f]:
            continue  # the file is quarantined: its rows have no frames
        pts = infos[f].pts_seconds
        lo = np.searchsorted(pts, seg[group, 0] - _RANGE_EPS, side="left")
        hi = np.searchsorted(pts, seg[group, 1] - _RANGE_EPS, side="left")
        first[group], frames[group] = lo, np.maximum(hi - lo, 0)
        for r in group[hi <= lo].tolist():
            a, b = seg[r]
            col = "start" if len(pts) and a > pts[-1] else "start/end"
            span = f"[{pts[0]:g}, {pts[-1]:g}] s" if len(pts) else "nowhere (no frames)"
            reason = (f"column '{col}': the range [{a:g}, {b:g}) s holds no frame of {row_paths[r]} "
                      f"(its frames lie in {span})")
            if cfg.on_error == "raise":
                raise ConfigError(f"{source.where(r)}: {reason}; fix the row, or pass on_error='skip' to leave it out")
            log.warning("quarantined %s: %s", source.where(r), reason)
            quarantined[source.where(r)] = reason
    return Rows(row_file, first, frames, list(row_paths), trimmed=True)


def with_skip_hint(exc: VideoError) -> VideoError:
    """The same error, telling an ``on_error="raise"`` user how to go on."""
    hint = "pass on_error='skip' to quarantine bad files and go on; `ringload index SOURCE` lists every bad file at once"
    if exc.hint:
        hint = f"{exc.hint}; {hint}"
    try:
        return type(exc)(exc.path, exc.reason, hint=hint)
    except TypeError:  # a subclass with another signature
        return exc


def _video_error(etype: str, path: str, reason: str) -> VideoError:
    from . import errors

    cls = getattr(errors, etype, None)
    if not (isinstance(cls, type) and issubclass(cls, VideoError)):
        cls = VideoError
    return cls(path, reason)


def _failed_rows(cfg: LoaderConfig, index, quarantined: dict[str, str]) -> None:
    """Files the index file records as unusable: raise the first, or quarantine them all."""
    for i in np.flatnonzero(index.column("ok") == 0).tolist():
        etype, reason = index.error(i)
        exc = _video_error(etype, index.path(i), reason)
        if cfg.on_error == "raise":
            raise with_skip_hint(exc) from None
        log.warning("quarantined %s", exc)
        quarantined[exc.path] = exc.reason


# More files than this get a progress bar while the constructor indexes them.
_BAR_MIN_FILES = 8
_SLOW_INDEX_S = 5.0


def _index(cfg: LoaderConfig, paths: list[str], quarantined: dict[str, str], members=None) -> list:
    """One row per path: its VideoInfo, or (path, error type, reason) for a quarantined file."""
    import sys
    import time

    from .probe import index_paths

    t0 = time.perf_counter()
    bar = None
    many = len(paths) > _BAR_MIN_FILES
    if many:
        from tqdm import tqdm

        # disable=None: no bar where stderr is not a terminal (logs, CI).
        bar = tqdm(total=len(paths), unit="video", desc="ringload: indexing", file=sys.stderr, disable=None,
                   dynamic_ncols=True, leave=False)  # fmt: skip
    try:
        # Many files: parallel processes; a few: in this process. Both through the cache.
        results = index_paths(paths, workers=None if many else 1, on_result=(lambda r: bar.update(1)) if bar else None,
                              members=members)
    finally:
        if bar is not None:
            bar.close()
    rows = []
    for r in results:
        if r.info is not None:
            rows.append(r.info)
            continue
        exc = _video_error(r.error_type or "VideoError", r.path, r.reason or r.error or "")
        if cfg.on_error == "raise":
            raise with_skip_hint(exc) from None
        log.warning("quarantined %s", exc)
        quarantined[exc.path] = exc.reason
        rows.append((r.path, type(exc).__name__, exc.reason))
    elapsed = time.perf_counter() - t0
    (log.warning if elapsed > _SLOW_INDEX_S else log.info)(
        "indexed %d videos in %.1f s; `ringload index SOURCE --out data.ringindex` once, then "
        "VideoLoader(\"data.ringindex\", ...), avoids this wait next time", len(paths), elapsed,
    )
    return rows


def _sample_counts(cfg: LoaderConfig, infos, rows: Rows):
    """(valid starts per row, the lengths handed to plan_epoch)."""
    n = rows.frames.copy()
    if cfg.sample == "frames":
        return n.copy(), n
    if cfg.sample == "segments":
        ones = (n > 0).astype(np.int64)
        return ones, ones
    if cfg.fps is None:
        return np.maximum(n - (cfg.clip_len - 1) * cfg.frame_stride, 0), n
    m = np.zeros(len(n), dtype=np.int64)
    for v in np.flatnonzero(n).tolist():
        lo = int(rows.first[v])
        m[v] = _fps_starts(infos[int(rows.file[v])].pts_seconds[lo : lo + n[v]], cfg.clip_len, cfg.fps)
    return m, m.copy()


def _short_videos(cfg: LoaderConfig, rows: Rows, counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Videos (rows) with frames but no full sample: one start each unless ``short_video``
    skips them (counts and lengths are updated in place); a warning or an error says so."""
    paths = rows.paths
    short = (rows.frames > 0) & (counts == 0)
    n = int(short.sum())
    if n == 0:
        return short
    what = (f"sample={cfg.sample!r}, clip_len={cfg.clip_len}, "
            + (f"fps={cfg.fps:g}" if cfg.fps is not None else f"frame_stride={cfg.frame_stride}"))
    names = ", ".join(os.path.basename(paths[v]) for v in np.flatnonzero(short)[:3]) + (", ..." if n > 3 else "")
    what_rows = "rows" if rows.trimmed else "videos"
    head = f"{n} of {len(paths)} {what_rows} are shorter than one sample ({what}: {names})"
    if cfg.short_video == "error":
        raise ConfigError(f"{head}; short_video='error': pass short_video='repeat_last', 'wrap' or 'skip', "
                          "or shorter clips")
    do = {"repeat_last": "each gets one sample whose frames past the end repeat the last frame",
          "wrap": "each gets one sample whose frames past the end start the video over",
          "skip": "they are never sampled"}[cfg.short_video]
    log.warning("%s; short_video=%r: %s (frame_index shows the frames used)", head, cfg.short_video, do)
    if cfg.short_video != "skip":
        counts[short] = 1
        if cfg.sample == "clips" and cfg.fps is None:
            # The plan counts starts from lengths and the clip span: a span gives one start.
            lengths[short] = (cfg.clip_len - 1) * cfg.frame_stride + 1
        else:
            lengths[short] = 1
    return short


def _bounded_defaults(cfg: LoaderConfig, infos, size, rows):
    # Bounded chunk_len and max_per_chunk from the data's GOPs and the ring (ringload._bounded).
    if cfg.sampling != "bounded":
        return None
    from ._bounded import choose, median_gop
    from ._ring import RingLayout

    slot_bytes = RingLayout(1, (cfg.batch_size, cfg.frames_per_sample, *size, 3)).slot_stride
    chosen = choose(
        median_gop=median_gop(infos.column("keyframes"), infos.column("kf_off")), batch_size=cfg.batch_size,
        slot_bytes=slot_bytes,
        chunk_len=cfg.chunk_len, max_per_chunk=cfg.max_per_chunk,
        min_effective_batch=cfg.min_effective_batch,
        frame_starts=cfg.fps is None and not rows.trimmed,
    )
    log.info("bounded sampling: chunk_len=%d, max_per_chunk=%d, cuts on multiples of %d starts (%s)", chosen.chunk_len,
             chosen.max_per_chunk, chosen.cut_grid, chosen.reason)
    return chosen


def _output_size(cfg: LoaderConfig, infos, used) -> tuple[int, int]:
    if cfg.size is not None:
        return cfg.size
    from ._indexfile import video_dims

    w, h, turn, _ = video_dims(infos, cfg.orientation)
    use = used
    quarter = (turn % 180) == 90
    hs, ws = np.where(quarter, w, h)[use], np.where(quarter, h, w)[use]
    dims = set(zip(hs.tolist(), ws.tolist())) if len(hs) < 4096 else {tuple(r) for r in np.unique(np.stack([hs, ws], 1), axis=0).tolist()}
    if len(dims) != 1:
        raise ConfigError(f"size=None needs every video to have the same size; found {len(dims)} sizes: pass size=(h, w)")
    return dims.pop()


def check_epoch(plan, cfg, rank: int, world: int) -> None:
    """No silent empty epoch; a warning where ranks' last batches are empty."""
    if len(plan) == 0:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {int(plan.total_samples)} samples of an epoch"
            + (f" shared by {world} ranks" if world > 1 else "")
            + " and drop_last=True drops them all: lower batch_size, or pass drop_last=False"
        )
    if len(np.asarray(plan[len(plan) - 1])) == 0:
        # Ranks keep equal batch counts and nothing is padded (a padded sample would be seen twice).
        log.warning(
            "rank %d of %d: the last batch of each epoch is empty (the samples do not fill a last round "
            "across ranks); pass drop_last=True to drop short last batches", rank, world,
        )


_LATER_DEFAULTS = {"clips_per_video": None, "short_video": "repeat_last", "min_effective_batch": None, "balance": None,
                   "balance_threshold": None, "balance_power": None}


def settings(cfg, data, rank: int, world: int, weights=None) -> dict:
    """What decides the batches (the resume check): every setting but the resources, plus the data."""
    keep = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in ("num_workers", "prefetch_batches", "device", "timeout_s", "task_timeout_s", "rank", "world_size",
                          "remote_cache_bytes", "remote_retries", "remote_timeout_s")
    }
    # Settings added later are left out at their defaults, so states saved before still resume.
    for name, default in _LATER_DEFAULTS.items():
        if keep.get(name) == default:
            keep.pop(name)
    keep.update(
        rank=rank, world_size=world, size=data.size, num_videos=len(data.paths),
        paths=digest(data.paths), lengths=digest(data.plan_lengths.tolist()),
    )
    if data.bounded is not None:  # the derived values decide the batches too
        keep.update(chunk_len_in_use=data.chunk_len, max_per_chunk_in_use=data.max_per_chunk)
        if data.bounded.cut_grid > 1:
            keep["cut_grid_in_use"] = data.bounded.cut_grid
    if weights is not None:
        keep["weights"] = digest([float(w) for w in weights])
    rows = data.rows
    if rows is not None and rows.trimmed:
        keep["rows"] = digest([rows.file.tolist(), rows.first.tolist(), rows.frames.tolist()])
    return json.loads(json.dumps(keep, default=str))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]
