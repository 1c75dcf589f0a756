"""Write docs/api.md from the docstrings of ringload's public names.

    PYTHONPATH=. python docs/gen_api.py > docs/api.md

Public means: every name in ``ringload.__all__`` plus the public submodules below.
tests/test_docs.py fails when a public name is missing from docs/api.md.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import sys

PUBLIC_SUBMODULES = ("ringload.synth", "ringload.augment")

_INTRO = """\
# API reference

Generated from the docstrings by `PYTHONPATH=. python docs/gen_api.py > docs/api.md`;
do not edit by hand. Start with [getting started](getting-started.md); the command line
is described there too ([The command line](getting-started.md#the-command-line)).

Everything listed here is public and importable as `ringload.NAME`; the submodules
`ringload.synth` and `ringload.augment` are imported by name. Anything else (modules and
names starting with `_`) is private and may change without notice.
"""


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parts, star_done = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    out = f"({', '.join(parts)})"
    if len(out) > 80:  # one parameter per line reads better than a wrapped line
        out = "(\n" + "".join(f"    {p},\n" for p in parts) + ")"
    if sig.return_annotation is not sig.empty and not inspect.isclass(obj):
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def _annotation(a) -> str:
    # Modules use `from __future__ import annotations`, so annotations are strings already.
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _doc(obj) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else "*(no docstring)*"


def _members(cls):
    """Public methods and properties defined by the class or its ringload bases."""
    out = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__call__":
            continue  # other dunders (iteration, len, context manager) belong in the class docstring
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not owner.__module__.startswith("ringload"):
            continue
        raw = vars(owner)[name]
        if isinstance(raw, property):
            out.append((name, "property", raw.__doc__))
        elif isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw):
            fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            sig = " ".join(_signature(fn).split()).replace("( ", "(").replace(", )", ")")
            sig = sig.replace("(self, ", "(", 1).replace("(self)", "()", 1).replace("(cls, ", "(", 1)
            out.append((name, sig, fn.__doc__))
    return out


def _fields(cls):
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def _entry(qualname: str, obj, level: str = "##") -> list[str]:
    lines = []
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else ("enum" if issubclass(obj, enum.Enum) else "class")
        bases = [b.__name__ for b in obj.__bases__ if b is not object]
        head = f"{level} `{qualname}`"
        lines += [head, "", f"*{kind}*" + (f" (bases: {', '.join(f'`{b}`' for b in bases)})" if bases else "")]
        if not issubclass(obj, BaseException):
            sig = _signature(obj)
            if sig:
                lines += ["", "```python", f"{qualname}{sig}", "```"]
        lines += ["", _doc(obj), ""]
        fields = _fields(obj)
        if fields:
            lines += ["Fields: " + ", ".join(f"`{f}`" for f in fields), ""]
        if not issubclass(obj, BaseException):
            for name, sig, doc in _members(obj):
                if sig == "property":
                    first = inspect.cleandoc(doc).splitlines()[0] if doc else ""
                    lines += [f"- `{name}` (property)" + (f": {first}" if first else "")]
                else:
                    first = inspect.cleandoc(doc).splitlines()[0] if doc else ""
                    lines += [f"- `{name}{sig}`" + (f": {first}" if first else "")]
            if lines[-1] != "":
                lines.append("")
    elif callable(obj):
        lines += [f"{level} `{qualname}`", "", "```python", f"{qualname}{_signature(obj)}", "```", "", _doc(obj), ""]
    else:
        lines += [f"{level} `{qualname}`", "", f"`{obj!r}`", ""]
    return lines


def public_names():
    import ringload

    return list(ringload.__all__)


def generate() -> str:
    import ringload

    lines = [_INTRO]
    names = public_names()
    errors = [n for n in names if inspect.isclass(getattr(ringload, n)) and issubclass(getattr(ringload, n), BaseException)]
    main = [n for n in names if n not in errors]
    lines += ["## Contents", ""]
    lines += [f"- [`ringload.{n}`](#{_anchor('ringload.' + n)})" for n in main]
    lines += ["- [Errors](#errors)"]
    mods = []
    for modname in PUBLIC_SUBMODULES:
        try:
            mods.append(importlib.import_module(modname))
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
    lines += [f"- [`{m.__name__}`](#{_anchor(m.__name__)})" for m in mods]
    lines.append("")
    for n in main:
        lines += _entry(f"ringload.{n}", getattr(ringload, n))
    lines += ["## Errors", "", _doc(ringload.errors), ""]
    for n in errors:
        lines += _entry(f"ringload.{n}", getattr(ringload, n), level="###")
    for mod in mods:
        lines += [f"## `{mod.__name__}`", "", _doc(mod), ""]
        names = getattr(mod, "__all__", None) or [
            k for k, v in vars(mod).items() if not k.startswith("_") and getattr(v, "__module__", None) == mod.__name__
        ]
        for k in names:
            lines += _entry(f"{mod.__name__}.{k}", getattr(mod, k), level="###")
    return "\n".join(lines).rstrip() + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    out = []
    for ch in heading.strip().lower():
        if ch.isalnum() or ch in "-_":
            out.append(ch)
        elif ch == " ":
            out.append("-")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(generate())
