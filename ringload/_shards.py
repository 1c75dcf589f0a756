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


def find_member(path: str) -> tuple[int, int]:
    """(offset, size) of the member ``tar://NAME::SHARD`` in its shard, found by scanning it."""
    from ._tarshard import scan_shards
    from .errors import VideoOpenError

    shard, name = _remote.split_member(path)
    found = scan_shards([shard], _open_shard, label_key=None, progress=False)
    for m in found.members:
        if m.name == name:
            return m.offset, m.size
    raise VideoOpenError(path, f"{shard} holds no video member named {name!r}")


def shards_source(paths: list[str], on_error: str = "raise", *, label_key: str | None = "label") -> Source:
    """``paths`` with every shard replaced, in place, by its video members (in tar order)."""
    from ._tarshard import scan_shards

    shards = [_remote.normalize(p) for p in paths if is_shard(p)]
    found = scan_shards(shards, _open_shard, label_key=label_key, on_error=on_error)
    by_shard: dict[str, list[int]] = {}
    for i, m in enumerate(found.members):
        by_shard.setdefault(m.shard, []).append(i)
    rows, members = [], []
    for p in paths:
        if not is_shard(p):
            rows.append({"path": p})
            members.append((-1, -1))
            continue
        for i in by_shard.get(_remote.normalize(p), []):
            m, label, meta = found.members[i], found.labels[i], found.meta[i]
            rec = {**meta, "path": m.path}
            if isinstance(label, list):
                rec["labels"] = label
            elif label is not None:
                rec["label"] = label
            rows.append(rec)
            members.append((m.offset, m.size))
    if not rows:
        from .errors import ConfigError

        raise ConfigError(f"source: the {len(shards)} tar shard(s) hold no video members (first: {shards[0]})")
    name = shards[0] if len(shards) == 1 else f"{len(shards)} tar shards"
    return rows_source(name, list(enumerate(rows, 1)), None, members=np.asarray(members, dtype=np.int64), lines=False)
