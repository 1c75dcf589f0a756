"""The files a run reads: a generated dataset (cached on disk) or the user's SOURCE, and
ringload's index of them, built once before the contenders run."""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
import time

from ..errors import ConfigError
from .config import DatasetSpec

log = logging.getLogger(__name__)


def default_data_dir() -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "ringload-bench"


def prepare_dataset(spec: DatasetSpec, *, data_dir=None, seed: int = 0, progress=None, workers: int = 1) -> list[str]:
    """Generate (or reuse) ``spec`` under ``data_dir`` and return the ``names`` paths.

    ``workers`` > 1 encodes the missing videos in that many spawned processes (each
    encoder runs on one thread; the files do not depend on how many run at once)."""
    root = pathlib.Path(data_dir or default_data_dir()) / f"{spec.codec}-{spec.height}p-g{spec.gop}-{spec.key()}"
    videos = root / "videos"
    names = root / "names"
    videos.mkdir(parents=True, exist_ok=True)
    names.mkdir(parents=True, exist_ok=True)
    ext = ".webm" if spec.codec == "vp9" else ".mp4"
    distinct = [videos / f"cam_{v:04d}{ext}" for v in range(spec.distinct)]
    missing = [(v, path) for v, path in enumerate(distinct) if not path.exists()]
    if missing:
        _generate(spec, missing, seed=seed, progress=progress, workers=workers)
    out = []
    for n in range(spec.names):
        link = names / f"video_{n:04d}{ext}"
        target = distinct[n % spec.distinct]
        if not link.is_symlink() or os.readlink(link) != str(target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        out.append(str(link))
    return out


#: The longest one video's encode may take in a worker process before generation gives up.
GENERATE_TIMEOUT_S = 1800.0


def _make_one(spec: DatasetSpec, path: str, seed: int) -> str:
    from ..synth import make_video

    path = pathlib.Path(path)
    part = path.with_name(path.stem + ".part" + path.suffix)  # an interrupted run leaves no half file
    make_video(part, width=spec.width, height=spec.height, fps=spec.fps, seconds=spec.seconds, gop=spec.gop,
               bframes=spec.bframes, codec=spec.codec, seed=seed)  # fmt: skip
    os.replace(part, path)
    return str(path)


def _generate(spec: DatasetSpec, missing, *, seed: int, progress, workers: int) -> None:
    what = f"{spec.width}x{spec.height} {spec.codec}, {spec.seconds:g} s"
    workers = max(1, min(workers, len(missing)))
    if workers == 1:
        for v, path in missing:
            log.info("generating %s", path)
            if progress:
                progress(f"generating {path.name} ({what})")
            _make_one(spec, str(path), seed + v)
        return
    import concurrent.futures
    import multiprocessing

    log.info("generating %d videos (%s) in %d processes", len(missing), what, workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_make_one, spec, str(path), seed + v) for v, path in missing]
        try:
            for i, fut in enumerate(concurrent.futures.as_completed(futures, timeout=GENERATE_TIMEOUT_S * len(futures))):
                fut.result()
                if progress:
                    progress(f"generated {i + 1}/{len(futures)} videos ({what})")
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def list_source(source: str) -> list[str]:
    """The files of SOURCE as :class:`ringload.VideoLoader` would read them.

    A directory, glob, video file or CSV/JSONL manifest goes through
    ``ringload._source.resolve_source`` (a directory lists each real file once); any
    other text file lists one path a line.
    """
    from .._source import MANIFEST_EXTENSIONS, VIDEO_EXTENSIONS, resolve_source

    p = pathlib.Path(source)
    if p.is_file() and p.suffix.lower() not in VIDEO_EXTENSIONS | MANIFEST_EXTENSIONS:
        files = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        if not files:
            raise ConfigError(f"SOURCE={source}: the list file names no videos")
        return files
    return list(resolve_source(source).paths)


def warm_index(paths: list[str], workers: int) -> float | None:
    """Fill ringload's index cache for ``paths`` (:func:`ringload.probe.index_paths`);
    returns the seconds it took, or None when some file could not be indexed.

    Indexing is a one-time cost per file (cached on disk), reported on its own so that
    the first ringload contender's time to first batch is not charged with it.
    """
    from ..probe import index_paths

    t0 = time.perf_counter()
    results = index_paths(paths, workers=max(1, workers))
    bad = [r for r in results if r.error]
    if bad:  # the ringload contenders meet the same error and report it
        log.warning("indexing failed for %d of %d files, first: %s", len(bad), len(paths), bad[0].error)
        return None
    return time.perf_counter() - t0


def file_size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def frame_counts(paths: list[str]) -> tuple[list[int], list[list[int]]]:
    """Frame counts and coded (width, height) of ``paths`` from ringload's index (cached on
    disk), for the peers, which run where ringload cannot be imported: they sample the same
    frames a ringload contender can and are not charged for probing the files."""
    from ..probe import probe

    infos = [probe(p) for p in paths]
    return [i.num_frames for i in infos], [[i.width, i.height] for i in infos]
