"""``make demo``: generate a small dataset and show what ringload does with it."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("ringload demo: the loader is not built yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
