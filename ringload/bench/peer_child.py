"""A peer contender's process: ``PEER_PYTHON .../ringload/bench/peer_child.py`` (by path).

The peer interpreter (``--peer-python``, built by ``bench/peers_env.sh``) has torch, numpy
and the peer libraries, not ringload's dependencies, so ``ringload/__init__.py`` (which
imports PyAV) must not run in it. This script registers the folder it lies in as a package
of its own, ``_ringload_bench``, with nothing in its ``__init__``, and imports from it only the
modules that need the standard library alone at import time: ``peers`` and the harness
modules it uses (``measure``, ``contenders``, ``procfs``, ``rounds``, ``_json``). It then does
what ``python -m ringload.bench.measure`` does for the other contenders: read one spec on
stdin, measure it with the same ``measure.measure``, report on stdout.

``--versions`` prints the interpreter's Python and peer versions as JSON and exits.
"""

import importlib
import json
import pathlib
import sys
import types

PACKAGE = "_ringload_bench"


def load(name: str):
    """``_ringload_bench.<name>``: a module of this folder, imported without ``ringload``."""
    if PACKAGE not in sys.modules:
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [str(pathlib.Path(__file__).resolve().parent)]
        sys.modules[PACKAGE] = pkg
    return importlib.import_module(f"{PACKAGE}.{name}")


def main(argv) -> int:
    peers = load("peers")
    if argv[1:] == ["--versions"]:
        sys.stdout.write(json.dumps(peers.versions()) + "\n")
        return 0
    return load("measure").child_main(peers.FACTORIES)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
