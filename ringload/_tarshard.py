"""List the video members of WebDataset-style tar shards as byte ranges, with labels and text.

A shard is an uncompressed tar of samples: ``KEY.mp4`` beside ``KEY.cls`` / ``KEY.json`` /
``KEY.txt``, where KEY is the member name up to the first dot of its basename, directory
included (``d/abc.mp4`` and ``d/abc.json`` are sample ``d/abc``). Nothing is extracted: the
scan reads tar headers and the small sidecar members through the file object it is given and
seeks over video data, so it costs a few KiB per sample locally or through range reads.

Rules: one video member per sample key (two is an error naming both, as is any (key, ext)
appearing twice); a sample's label is its ``.cls`` text (an int, else the stripped class
name), else the ``.json``'s ``label_key`` field (int, str or list of them), else None.
Members whose key has no video (``KEY.json`` alone, links, names with no extension or
starting with a dot) are not samples; they are listed in ``skipped`` and logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import tarfile
from dataclasses import dataclass, field

from ._source import _is_video
from .errors import ConfigError, VideoOpenError

log = logging.getLogger(__name__)

#: Largest ``.cls`` / ``.json`` / ``.txt`` member read, in bytes.
SIDECAR_LIMIT = 1 << 20
_SIDECARS = ("cls", "json", "txt")
_COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".zst", ".tzst", ".lz4", ".zip")
_MAGIC = re.compile(rb"(?P<gzip>\x1f\x8b)|(?P<bzip2>BZh[1-9]1AY&SY)|(?P<xz>\xfd7zXZ\x00)|(?P<zstd>\x28\xb5\x2f\xfd)"
                    rb"|(?P<lz4>\x04\x22\x4d\x18)|(?P<zip>PK\x03\x04)")  # fmt: skip
_INT = re.compile(r"[+-]?[0-9]+")
_SKIP = "or pass on_error='skip' to leave the shard out"
_HINT = f"re-create it with tar --format=pax -cf, or Python's tarfile / webdataset's TarWriter; {_SKIP}"


@dataclass(frozen=True)
class Member:
    """A video member: ``offset`` is where its data starts in the shard, ``size`` its length."""

    shard: str
    name: str
    key: str
    offset: int
    size: int

    @property
    def path(self) -> str:
        return member_path(self.shard, self.name)


@dataclass
class ShardSamples:
    """One entry per sample in ``members``, ``labels`` and ``meta`` (``meta[i]["key"]`` is the
    sample key, ``"txt"`` the ``.txt`` text, plus the ``.json``'s scalar top-level fields).
    ``skipped``: (shard, key) of keys with no video; ``errors``: (shard, reason) of shards
    left out with ``on_error="skip"``."""

    members: list[Member] = field(default_factory=list)
    labels: list = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: ShardSamples) -> None:
        for name in ("members", "labels", "meta", "skipped", "errors"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.members)


def member_path(shard: str, name: str) -> str:
    """``tar://NAME::SHARD``, fsspec's spelling of a member of a tar (``fsspec.open`` opens it)."""
    if not name or "::" in name or name.endswith(":"):
        raise ConfigError(f"{shard}: tar member {name!r} cannot be spelled tar://NAME::SHARD (it is empty, has '::' "
                          "or ends in ':'); rename it in the shard")  # fmt: skip
    return f"tar://{name}::{shard}"


def parse_member_path(path: str) -> tuple[str, str] | None:
    """(shard, name) of a ``tar://NAME::SHARD`` path, None for any other path."""
    if not isinstance(path, str) or not path.startswith("tar://"):
        return None
    name, sep, shard = path[len("tar://") :].partition("::")
    return (shard, name) if sep and name and shard else None


def _key_ext(name: str) -> tuple[str, str] | None:
    """WebDataset's split of a member name: (key, extension after the basename's first dot)."""
    head, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (head + slash + stem, ext) if stem and dot and ext else None


def _check_uncompressed(fileobj, shard: str) -> None:
    start = fileobj.tell()
    found = _MAGIC.match(fileobj.read(10))
    fileobj.seek(start)
    kind = found.lastgroup if found else None
    if kind is None and shard.lower().endswith(_COMPRESSED_SUFFIXES):
        kind = os.path.splitext(shard)[1]
    if kind is not None:
        raise ConfigError(f"{shard}: the shard is compressed ({kind}); shards must be uncompressed tar, since videos "
                          "are read as byte ranges of it. Decompress it (e.g. gunzip) or re-create it with tar -cf")


def _read_exact(fileobj, shard: str, offset: int, size: int, what: str) -> bytes:
    fileobj.seek(offset)
    data = fileobj.read(size)
    if len(data) != size:
        raise VideoOpenError(shard, f"not a readable tar shard: {what} ends early at byte {offset + len(data)}",
                             hint=_HINT)  # fmt: skip
    return data


def _list_members(fileobj, shard: str) -> list[tarfile.TarInfo]:
    """Every header of the shard, then a check that the end-of-archive block follows (tarfile
    ends quietly at a corrupt or cut header past the first, which would lose samples)."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tf:  # does not close fileobj
            infos = list(iter(tf.next, None))
            end = tf.offset
    except (tarfile.TarError, EOFError) as exc:
        raise VideoOpenError(shard, f"not a readable tar shard: {exc}", hint=_HINT) from None
    fileobj.seek(end)
    block = fileobj.read(tarfile.BLOCKSIZE)
    after = f"after member {infos[-1].name!r}" if infos else "at the start"
    if len(block) < tarfile.BLOCKSIZE:
        raise VideoOpenError(shard, f"not a readable tar shard: it ends {after} (byte {end}) without the tar "
                             "end-of-archive marker; it is truncated", hint=_HINT)  # fmt: skip
    if block.count(0) != len(block):
        raise VideoOpenError(shard, f"not a readable tar shard: the header {after} (byte {end}) is corrupt",
                             hint=_HINT)  # fmt: skip
    return infos


def _text(fileobj, shard: str, ti: tarfile.TarInfo) -> str:
    what = f"member {ti.name!r}"
    if ti.size > SIDECAR_LIMIT:
        raise VideoOpenError(shard, f"{what} is {ti.size} bytes, over the {SIDECAR_LIMIT}-byte limit of a "
                             ".cls/.json/.txt sidecar; keep large data out of sidecars", hint=_SKIP)  # fmt: skip
    data = _read_exact(fileobj, shard, ti.offset_data, ti.size, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VideoOpenError(shard, f"{what} is not UTF-8 text ({exc}); re-encode it as UTF-8", hint=_SKIP) from None


def _json_label(value, shard: str, name: str, label_key: str):
    items = value if isinstance(value, list) else [value]
    if value is None or all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in items):
        return value
    raise VideoOpenError(shard, f"member {name!r}: field {label_key!r} is {str(value)[:40]!r}; a label must be "
                         "an int, a class name or a list of them; fix it, pass label_key=None", hint=_SKIP)  # fmt: skip


def _scan(fileobj, shard: str, label_key: str | None) -> ShardSamples:
    _check_uncompressed(fileobj, shard)
    videos: dict[str, list[tarfile.TarInfo]] = {}
    sidecars: dict[tuple[str, str], tarfile.TarInfo] = {}
    keys: dict[str, None] = {}  # every key seen, in tar order
    for ti in _list_members(fileobj, shard):
        if ti.isdir():
            continue
        ke = _key_ext(ti.name)
        if ke is None:
            keys[ti.name] = None
            continue
        key, ext = ke
        keys[key] = None
        if ti.isreg() and _is_video(ti.name):
            if ti.issparse():
                raise VideoOpenError(shard, f"member {ti.name!r} is a GNU sparse file and cannot be read as one "
                                     "byte range; re-create the shard without --sparse", hint=_SKIP)  # fmt: skip
            videos.setdefault(key, []).append(ti)
        elif ti.isreg() and ext in _SIDECARS:
            if (key, ext) in sidecars:
                raise VideoOpenError(shard, f"member {ti.name!r} appears twice; keep one", hint=_SKIP)
            sidecars[key, ext] = ti
    out = ShardSamples(skipped=[(shard, k) for k in keys if k not in videos])
    for key, tis in videos.items():
        if len(tis) > 1:
            names = " and ".join(repr(t.name) for t in tis)
            raise VideoOpenError(shard, f"sample {key!r} has two video members, {names}; ringload takes one video "
                                 "per sample: give the other its own key", hint=_SKIP)  # fmt: skip
        ti = tis[0]
        text = {ext: _text(fileobj, shard, sidecars[key, ext]) for ext in _SIDECARS if (key, ext) in sidecars}
        meta, label, cls = {}, None, text.get("cls", "").strip()
        if "json" in text:
            name = sidecars[key, "json"].name
            try:
                obj = json.loads(text["json"])
            except ValueError as exc:
                raise VideoOpenError(shard, f"member {name!r} is not valid JSON ({exc}); fix or remove it",
                                     hint=_SKIP) from None  # fmt: skip
            if not isinstance(obj, dict):
                raise VideoOpenError(shard, f"member {name!r} holds a JSON {type(obj).__name__}, not an object",
                                     hint=_SKIP)  # fmt: skip
            meta = {k: v for k, v in obj.items() if k != label_key and isinstance(v, (str, int, float, bool))}
            if label_key is not None and not cls:
                label = _json_label(obj.get(label_key), shard, name, label_key)
        if cls:
            label = int(cls) if _INT.fullmatch(cls) else cls
        if "txt" in text:
            meta["txt"] = text["txt"]
        meta["key"] = key
        out.members.append(Member(shard, ti.name, key, ti.offset_data, ti.size))
        out.labels.append(label)
        out.meta.append(meta)
    return out


def _guarded(shard: str, on_error: str, scan) -> ShardSamples:
    """``scan()``, with an OSError as a VideoOpenError naming the shard; one skipped with
    ``on_error="skip"`` becomes an entry of ``errors`` and a warning."""
    try:
        try:
            return scan()
        except OSError as exc:
            raise VideoOpenError(shard, f"cannot read the shard: {exc}") from exc
    except VideoOpenError as exc:
        if on_error == "raise":
            raise
        log.warning("skipped shard %s", exc)
        return ShardSamples(errors=[(shard, str(exc))])


def _open_scan(open_fn, shard: str, label_key: str | None) -> ShardSamples:
    with open_fn(shard) as f:
        return _scan(f, shard, label_key)


def scan_shard(fileobj, shard: str, *, label_key: str | None = "label", on_error: str = "raise") -> ShardSamples:
    """The samples of one shard read through ``fileobj`` (seekable, binary, at the shard's
    start); ``shard`` names it in members and messages. A compressed shard is a ConfigError;
    an unreadable one a VideoOpenError, or with ``on_error="skip"`` an entry of ``errors``."""
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    out = _guarded(shard, on_error, lambda: _scan(fileobj, shard, label_key))
    if out.skipped:
        log.warning("%s: %d key(s) with no video member are not samples (first: %r)",
                    shard, len(out.skipped), out.skipped[0][1])  # fmt: skip
    return out


def scan_shards(shards: list[str], open_fn=None, *, label_key: str | None = "label", on_error: str = "raise",
                progress: bool = True) -> ShardSamples:  # fmt: skip
    """The samples of ``shards`` in the given order; ``open_fn(shard)`` returns a seekable binary
    file object usable in ``with`` (default: ``open(shard, "rb")``). ``progress``: a tqdm bar
    on a terminal."""
    from tqdm import tqdm

    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    open_fn = open_fn or functools.partial(open, mode="rb")
    out = ShardSamples()
    # disable=None: no bar where stderr is not a terminal (logs, CI).
    with tqdm(total=len(shards), unit="shard", desc="ringload: scanning shards", file=sys.stderr,
              disable=None if progress else True, dynamic_ncols=True, leave=False) as bar:  # fmt: skip
        for shard in shards:
            out.extend(_guarded(shard, on_error, lambda: _open_scan(open_fn, shard, label_key)))  # noqa: B023
            bar.update(1)
            bar.set_postfix(samples=len(out.members), refresh=False)
    if out.skipped:
        n = len({s for s, _ in out.skipped})
        log.warning("%d key(s) with no video member in %d of %d shard(s) are not samples (first: %s in %s)",
                    len(out.skipped), n, len(shards), out.skipped[0][1], out.skipped[0][0])  # fmt: skip
    return out
