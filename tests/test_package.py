"""Packaging: the project installs as ONE top-level package, dal_search, with the three rooms mapped under it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_dal_search_at_the_top_level(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dal_search"}
    for room in ("objectives", "storage", "search"):
        assert f"dal_search/{room}/__init__.py" in names
    assert "dal_search/objectives/data/__init__.py" in names  # a package inside a room travels too
    assert "dal_search/search/analysis/_data.py" in names
    assert "dal_search/search/campaigns/quick.yaml" in names  # package data travels
    assert "dal_search/py.typed" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dal-search = dal_search.search.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_checkout_on_pythonpath_works_without_installing(tmp_path):
    # A GPU box or a Ray node may run the checkout as it is: the rooms beside dal_search/ are found.
    code = ("import dal_search.objectives.config as c, dal_search.search.cli as s; "
            "print(c.__file__); print(s.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    # -S drops site-packages and with it the editable install's finder: only the checkout can answer
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(ROOT / "objectives" / "config.py"), str(ROOT / "search" / "cli.py")]
