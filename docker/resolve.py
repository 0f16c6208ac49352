"""Record what pip installs into the image, and pin it: docker/resolved.json and docker/constraints.txt.

    .venv/bin/python docker/resolve.py /usr/bin/python3.11 python3.11            # re-record with today's pins
    .venv/bin/python docker/resolve.py --fresh /usr/bin/python3.11 python3.11    # newest versions pip finds

For each Python 3.11 interpreter named (pick one older than 3.11.3 and one newer: environment markers such as
redis's `async-timeout; python_full_version < '3.11.3'` differ between them), a throwaway venv resolves
pyproject.toml's [project] dependencies the way docker/Dockerfile installs them (`pip install -c
docker/constraints.txt`, or without the pins with --fresh), as `pip install --dry-run --report`. Nothing is
installed. The union of the resolutions becomes docker/constraints.txt; each package's version and
requirements go to docker/resolved.json, which tests/test_compose.py checks the constraints against.

torch 2.14.1 is the CUDA build from PyPI; its nvidia-*, cuda-* and triton wheels are pinned too (the CPU
image, built from download.pytorch.org/whl/cpu, installs none of them; docker/check_freeze.py knows).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
RESOLVED = ROOT / "docker" / "resolved.json"

HEADER = """\
# Every package the image installs, at the version it installs (docker/Dockerfile: pip install -c this file),
# for Python 3.11 on linux x86_64: pip's resolution of pyproject.toml's [project] dependencies, on Python 3.11
# before and after 3.11.3 (async-timeout is a redis dependency only before). The build fails when pip installs
# anything else (docker/check_freeze.py); tests/test_compose.py checks this file against docker/resolved.json.
# Regenerate both: .venv/bin/python docker/resolve.py /usr/bin/python3.11 python3.11   (see that file)
# nvidia-*, cuda-* and triton come with torch's CUDA build only; the CPU image has none of them.
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def resolve(python: str, fresh: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="dal-resolve-") as tmp:
        venv, reqs, report = Path(tmp) / "venv", Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        reqs.write_text("\n".join(dependencies()) + "\n")
        pins = [] if fresh else ["-c", str(CONSTRAINTS)]
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet",
                        "--ignore-installed", "--report", str(report), *pins, "-r", str(reqs)], check=True)
        return json.loads(report.read_text())


def main(argv: list[str]) -> int:
    fresh = "--fresh" in argv
    pythons = [a for a in argv if a != "--fresh"]
    if not pythons:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    packages: dict[str, dict] = {}
    resolutions = []
    for python in pythons:
        report = resolve(python, fresh)
        env = report["environment"]
        names = []
        for item in report["install"]:
            meta = item["metadata"]
            key = normalise(meta["name"])
            entry = {"name": meta["name"], "version": meta["version"],
                     "requires_dist": sorted(meta.get("requires_dist") or [])}
            if key in packages and packages[key]["version"] != entry["version"]:
                raise SystemExit(f"{meta['name']}: {packages[key]['version']} on one Python, {entry['version']} "
                                 f"on {env['python_full_version']}; pin it in {CONSTRAINTS.name} and re-run")
            packages[key] = entry
            names.append(key)
        resolutions.append({"python_full_version": env["python_full_version"], "pip": report["pip_version"],
                            "platform_machine": env["platform_machine"], "sys_platform": env["sys_platform"],
                            "installs": sorted(names)})
    RESOLVED.write_text(json.dumps({
        "what": "pip install --dry-run --report of pyproject.toml's dependencies (docker/resolve.py)",
        "dependencies": dependencies(), "resolutions": resolutions,
        "packages": dict(sorted(packages.items()))}, indent=1) + "\n")
    lines = []
    for key, p in sorted(packages.items()):
        on = [r["python_full_version"] for r in resolutions if key in r["installs"]]
        only = "" if len(on) == len(resolutions) else f"  # only on Python {', '.join(on)} (an environment marker)"
        lines.append(f"{p['name']}=={p['version']}{only}\n")
    CONSTRAINTS.write_text(HEADER + "".join(lines))
    print(f"{len(packages)} packages on {', '.join(r['python_full_version'] for r in resolutions)}: "
          f"wrote {CONSTRAINTS.relative_to(ROOT)} and {RESOLVED.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
