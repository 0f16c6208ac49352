"""`python -m search ...` is `dal-search ...` (workers are started this way, with the same interpreter)."""

import sys

from search.cli import main

sys.exit(main())
