"""``python -m visual_search.dev.cli``: the same as ``visual-search``."""

import sys

from . import main

sys.exit(main())
