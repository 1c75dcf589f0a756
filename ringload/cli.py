"""The ``ringload`` command: one entry point, one sub-command per module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import RingloadError

# Sub-command -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
_COMMANDS = {
    "bench": "ringload._cli_bench",
    "index": "ringload._cli_index",
    "inspect": "ringload._cli_inspect",
}

EXIT_OK = 0
EXIT_FAILURE = 1  # ran, but something the user asked for failed (bad files, missed target)
EXIT_USAGE = 2  # bad arguments (argparse's own convention)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

_EPILOG = "exit status: 0 ok, 1 something asked for failed (named in the log), 2 bad arguments, 130 interrupted"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringload",
        description="Fast, exact video frame and clip loading for PyTorch.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"ringload {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in _COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except RingloadError as exc:
        logging.getLogger("ringload").error("%s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
