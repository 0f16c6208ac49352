"""dal-search: tune the Dynamics-Aware Loss (DAL) on noisy labels.

The three rooms live under this one package:

    dal_search.objectives   what ONE trial computes (losses, schedules, noise, data, models, the trainer)
    dal_search.storage      where results live (storage URLs, heartbeats, exports)
    dal_search.search       how studies explore (campaigns, workers, the Ray pool, analysis, the CLI)

In the repository the rooms are the top-level folders `objectives/`, `storage/` and `search/`; the build
configuration (pyproject.toml) maps them under `dal_search`, so an installed copy has only `dal_search` at
the top level of site-packages.
"""

from __future__ import annotations

import os as _os

# A source checkout used without installing (PYTHONPATH=checkout, e.g. on a GPU box or a Ray node): the rooms
# sit beside this folder rather than inside it, so look for subpackages there too. An installed copy has them
# inside and never takes this branch.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "objectives")) and _os.path.isfile(
        _os.path.join(_root, "objectives", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821
