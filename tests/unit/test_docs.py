"""The docs keep up with the code: every public name is in docs/api.md, and links resolve."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

import ringload

from helpers import REPO
DOCS = REPO / "docs"
_spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
gen_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_api)

REGENERATE = "regenerate it: PYTHONPATH=. python docs/gen_api.py > docs/api.md"


def _headings(text: str) -> list[str]:
    # Headings outside fenced code blocks.
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.append(line.lstrip("#").strip())
    return out


def test_every_public_name_is_documented():
    api = (DOCS / "api.md").read_text()
    headings = set(_headings(api))
    missing = [n for n in ringload.__all__ if f"`ringload.{n}`" not in headings]
    assert not missing, f"public names missing from docs/api.md: {missing}; {REGENERATE}"


def test_public_submodules_are_documented():
    api = (DOCS / "api.md").read_text()
    headings = set(_headings(api))
    for modname in gen_api.PUBLIC_SUBMODULES:
        if importlib.util.find_spec(modname) is None:
            continue  # not part of this build
        mod = importlib.import_module(modname)
        assert f"`{modname}`" in headings, f"{modname} missing from docs/api.md; {REGENERATE}"
        for name in getattr(mod, "__all__", []):
            assert f"`{modname}.{name}`" in headings, f"{modname}.{name} missing; {REGENERATE}"


def test_generator_documents_every_public_name():
    text = gen_api.generate()
    headings = set(_headings(text))
    assert all(f"`ringload.{n}`" in headings for n in ringload.__all__)


def test_api_page_is_the_generators_output():
    assert (DOCS / "api.md").read_text() == gen_api.generate(), f"docs/api.md is stale: {REGENERATE}"


def test_check_catches_a_missing_name(monkeypatch):
    # The check above must be able to fail: add a public name that the page does not know.
    monkeypatch.setattr(ringload, "__all__", [*ringload.__all__, "not_documented_anywhere"])
    with pytest.raises(AssertionError, match="not_documented_anywhere"):
        test_every_public_name_is_documented()


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _md_files():
    return sorted(DOCS.glob("*.md")) + [REPO / "README.md"]


def _links(path: pathlib.Path):
    text, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            text.append(re.sub(r"`[^`]*`", "", line))
    for m in _LINK.finditer("\n".join(text)):
        yield m.group(1) or m.group(2)


@pytest.mark.parametrize("md", _md_files(), ids=lambda p: p.name)
def test_relative_links_resolve(md):
    broken = []
    for target in _links(md):
        if re.match(r"^[a-z]+:", target) or target.startswith("//"):
            continue  # absolute URL
        file_part, _, anchor = target.partition("#")
        dest = md if not file_part else (md.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if anchor and dest.suffix == ".md":
            anchors = {gen_api._anchor(h) for h in _headings(dest.read_text())}
            if anchor not in anchors:
                broken.append(f"{target} (no heading with anchor #{anchor} in {dest.name})")
    assert not broken, f"{md.name}: broken links: {broken}"


def test_api_page_generator_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, str(DOCS / "gen_api.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# API reference")


def test_faq_answers_the_six_questions():
    headings = _headings((DOCS / "faq.md").read_text())
    numbers = [h.split(" ", 1)[0] for h in headings if h[:1].isdigit()]
    assert numbers == ["1.", "2.", "3.", "4.", "4.1", "5.", "5.1", "6."]


def test_exit_codes_are_documented():
    from ringload import cli

    text = (DOCS / "getting-started.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", text, flags=re.M))
    codes = (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_BROKEN_PIPE, cli.EXIT_INTERRUPTED)
    assert set(rows) == {str(c) for c in codes}
    assert "usage" in rows[str(cli.EXIT_USAGE)] and "Ctrl-C" in rows[str(cli.EXIT_INTERRUPTED)]
    assert "head" in rows[str(cli.EXIT_BROKEN_PIPE)]
    for code in codes:  # `ringload --help` says the same
        assert f"{code} " in cli._EPILOG
