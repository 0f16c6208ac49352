"""`python -m dal_search ...` is `dal-search ...` (local workers are started this way, with the same interpreter)."""

import sys

from dal_search.search.cli import main

sys.exit(main())
