"""``visual-search info``: the model and the store in use."""

from __future__ import annotations

import json


def add(sub) -> None:
    info = sub.add_parser("info", help="show the model and the store in use")
    info.set_defaults(func=run)


def run(args) -> int:
    from ...catalog import get_catalog

    catalog = get_catalog()
    print(json.dumps({**catalog.info(), "projection": catalog.projection}, indent=2))
    return 0
