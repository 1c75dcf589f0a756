"""Plain JSON values from whatever a loader's ``stats()`` or a config holds."""

from __future__ import annotations

import dataclasses
import json
import pathlib


def jsonable(obj, depth=0):
    if depth > 4:
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, depth + 1) for v in obj][:200]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj):
        return jsonable(dataclasses.asdict(obj), depth + 1)
    try:
        return float(obj)
    except Exception:
        return repr(obj)


def write_json(doc: dict, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)  # a reader (or a crash) never sees half a file
    return path
