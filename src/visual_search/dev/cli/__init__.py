"""The ``visual-search`` command line: one module per command (or tight group of commands),
parser.py putting them together, common.py what they share; ``main`` runs one."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ...errors import StoreUnavailableError, VisualSearchError
from .common import store_in_use
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StoreUnavailableError as exc:
        return store_in_use(args, exc)
    except (VisualSearchError, ValueError, BotoCoreError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing file, a folder given as an image, a data dir that is a file
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
