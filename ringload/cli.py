"""The ``ringload`` command: one entry point, one sub-command per module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
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
# stdout closed before all was written (`ringload inspect DIR | head`): the command stops
# quietly with 128 + SIGPIPE, the status a shell reports for tools that SIGPIPE kills.
EXIT_BROKEN_PIPE = 141

_EPILOG = (
    "exit status: 0 ok, 1 something asked for failed (named in the log), 2 bad arguments, "
    "141 stdout closed early (e.g. | head), 130 interrupted"
)


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


def _closed_for_writing(fd: int) -> bool:
    """Has the reader of ``fd`` gone (a pipe or socket whose other end is closed)?"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in poller.poll(0))


def _stdout_fd() -> int | None:
    try:
        return sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by something without a descriptor
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit status (see ``_EPILOG``)."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # buffered output meets a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        # Python's recipe (the signal module's docs, "Note on SIGPIPE"): point stdout at
        # devnull so the interpreter's last flush has somewhere to go, and stop quietly.
        # Only when stdout is the pipe that broke: any other broken pipe is a real error.
        fd = _stdout_fd()
        if fd is None or not _closed_for_writing(fd):
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
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
