"""Sources of tar shards: each shard's video members become rows, with the labels and
text of their sibling members (``_tarshard``), read locally or with range requests."""

from __future__ import annotations

import numpy as np

from . import _remote
from ._source import Source, is_shard, rows_source

# Shards are scanned header by header: a small read-ahead, not the decoders' one.
_SCAN_READAHEAD = 32 << 10


def _open_shard(shard: str):
    if _remote.is_url(shard):
        return _remote.current().open(shard, readahead_bytes=_SCAN_READAHEAD)[0]
    return open(shard, "rb")  # the scan closes it


# Scans of shards whose members were looked up one by one (probe, read_frames, manifests):
# (shard, size, version) -> {member name: (offset, size)}, so a shard is scanned once.
_SCANNED: dict[tuple, dict[str, tuple[int, int]]] = {}


def _identity(shard: str) -> tuple:
    import os

    if _remote.is_url(shard):
        return (shard, *_remote.current().identity(shard))
    st = os.stat(shard)
    return (shard, st.st_size, st.st_mtime_ns, st.st_ino)


def find_member(path: str) -> tuple[int, int]:
    """(offset, size) of the member ``tar://NAME::SHARD`` in its shard, found by scanning it."""
    from ._tarshard import scan_shards
    from .errors import VideoOpenError

    shard, name = _remote.split_member(path)
    key = _identity(shard)
    members = _SCANNED.get(key)
    if members is None:
        found = scan_shards([shard], _open_shard, label_key=None, progress=False)
        members = {m.name: (m.offset, m.size) for m in found.members}
        _SCANNED[key] = members
        while len(_SCANNED) > 256:
            _SCANNED.pop(next(iter(_SCANNED)))
    if name not in members:
        raise VideoOpenError(path, f"{shard} holds no video member named {name!r}")
    return members[name]


def shards_source(paths: list[str], on_error: str = "raise", *, label_key: str | None = "label") -> Source:
    """``paths`` with every shard replaced, in place, by its video members (in tar order).
    Labels come from ``KEY.cls`` or the ``.json``'s ``label_key``; every other plain field
    of the ``.json``, ``txt`` and ``key`` ride along as ``Batch.meta``, taken as they are."""
    import dataclasses

    from ._tarshard import scan_shards

    shards = list(dict.fromkeys(_remote.normalize(p) for p in paths if is_shard(p)))
    found = scan_shards(shards, _open_shard, label_key=label_key, on_error=on_error)
    by_shard: dict[str, list[int]] = {}
    for i, m in enumerate(found.members):
        by_shard.setdefault(m.shard, []).append(i)
    rows, members, metas = [], [], []
    for p in paths:
        if not is_shard(p):
            rows.append({"path": p})
            members.append((-1, -1))
            metas.append({})
            continue
        for i in by_shard.get(_remote.normalize(p), []):
            m, label = found.members[i], found.labels[i]
            rec = {"path": m.path}
            if isinstance(label, list):
                rec["labels"] = label
            elif label is not None:
                rec["label"] = label
            rows.append(rec)
            members.append((m.offset, m.size))
            metas.append(found.meta[i])
    if not rows:
        from .errors import ConfigError

        raise ConfigError(f"source: the {len(shards)} tar shard(s) hold no video members (first: {shards[0]})")
    name = shards[0] if len(shards) == 1 else f"{len(shards)} tar shards"
    src = rows_source(name, list(enumerate(rows, 1)), None, members=np.asarray(members, dtype=np.int64), lines=False)
    # The sidecars' fields are per-sample text, never manifest columns (a .json "start" is not a range).
    names = list(dict.fromkeys(k for meta in metas for k in meta))
    meta = {k: [d.get(k) for d in metas] for k in names} or None
    return dataclasses.replace(src, meta=meta)
