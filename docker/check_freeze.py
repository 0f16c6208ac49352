"""Does an environment hold exactly docker/constraints.txt? `pip freeze --all` on stdin, exit 1 and one line per
difference if not. Standard library only: it runs in the image build and on any host.

    # in docker/Dockerfile, after the dependencies are installed (the build fails on a difference):
    pip freeze --all > /tmp/freeze && python check_freeze.py constraints.txt < /tmp/freeze
    # a built image, from the repository root on the host:
    docker run --rm --entrypoint pip dal-search:0.1.0 freeze --all | python3 docker/check_freeze.py docker/constraints.txt

Compared: every installed distribution must be pinned at its version, and every pin installed except those
marked `# only ...` (a pin that an environment marker needs on some Python patch levels only, such as
async-timeout before 3.11.3). Not compared: pip itself (the base image's), the project (dal-search), and the
local label of a version (torch 2.14.1+cpu is the pin torch==2.14.1). torch's CUDA libraries (nvidia-*, cuda-*, triton) may be absent when torch is a
+cpu build (docker-compose.cpu.yml's image); with another CUDA index (a +cuXXX torch) they are that index's
and are not compared at all.
"""

from __future__ import annotations

import re
import sys

IGNORED = {"pip", "dal-search"}
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(lines: list[str]) -> tuple[dict[str, str], set[str]]:
    """`name==version` lines -> ({name: version}, names marked `# only ...`); comments and blanks skipped, the
    project's `name @ url` line kept with version "@"."""
    out, optional = {}, set()
    for raw in lines:
        line, _, comment = raw.partition(" #")
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        if " @ " in line:
            name, _, _ = line.partition(" @ ")
            out[normalise(name)] = "@"
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"not a pin: {raw.strip()!r}")
        out[normalise(name)] = version.strip()
        if comment.strip().startswith("only"):
            optional.add(normalise(name))
    return out, optional


def differences(frozen: dict[str, str], pinned: dict[str, str], optional: set[str] = frozenset()) -> list[str]:
    torch_local = frozen.get("torch", "").partition("+")[2]
    problems = []
    for name, version in sorted(frozen.items()):
        if name in IGNORED:
            continue
        if torch_local.startswith("cu") and CUDA_ONLY.match(name):
            continue
        if name not in pinned:
            problems.append(f"{name}=={version} is installed but not pinned in constraints.txt: add it")
        elif version.partition("+")[0] != pinned[name]:
            problems.append(f"{name} is {version}, constraints.txt pins {pinned[name]}")
    for name, version in sorted(pinned.items()):
        if name in frozen or name in optional or (torch_local and CUDA_ONLY.match(name)):
            continue
        problems.append(f"{name}=={version} is pinned but not installed: remove the pin or install it")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pip freeze --all | python check_freeze.py CONSTRAINTS.txt", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        pinned, optional = parse(f.read().splitlines())
    frozen, _ = parse(sys.stdin.read().splitlines())
    problems = differences(frozen, pinned, optional)
    for p in problems:
        print(f"check_freeze: {p}", file=sys.stderr)
    if problems:
        return 1
    torch = frozen.get("torch", "none")
    print(f"check_freeze: the {len(frozen.keys() - IGNORED)} installed packages are exactly {argv[0]} "
          f"(torch {torch})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
