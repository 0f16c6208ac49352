"""Refuse placeholder secrets before a container of the pool starts: the image's entrypoint.

    python -P -m dal_search.search.secret_check [COMMAND ARG...]

checks the secrets in the environment, then runs COMMAND in its own place (exec: same PID, signals go to it);
without a COMMAND it only checks. Checked, when set:

- POSTGRES_PASSWORD, and the password inside DAL_SEARCH_STORAGE (a URL: postgresql+psycopg://dal:PW@...);
- RAY_AUTH_TOKEN (Ray's token auth), which must also be at least 32 characters;
- DAL_SEARCH_DASHBOARD_TOKEN (`dal-search dashboard`; DASHBOARD_TOKEN in .env).

Refused: an empty value, and a known placeholder, compared in lower case with everything but letters and
digits dropped (so `change-me`, `Change_Me`, `<changeme>` and `change-me-too` are all refused): .env.example's
values, the usual stand-ins (`password`, `secret`, `changeme`, ...), the project's own names, and one character
repeated. Everything else passes: this catches a copied example, not a weak password. A refusal is ONE line on
stderr naming every bad variable and how to make a real value (`openssl rand -hex 32`), exit status 2; nothing
runs. An unset variable is not checked here: compose's `${VAR:?}` already requires the ones a service needs.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Mapping
from urllib.parse import unquote, urlsplit

MAKE_ONE = "openssl rand -hex 32"
MIN_RAY_TOKEN = 32

# Lower case, letters and digits only (see normalise).
PLACEHOLDERS = frozenset({
    "changeme", "changemetoo", "changeit", "changethis", "replaceme", "fixme", "todo", "tbd", "placeholder",
    "password", "passwd", "pass", "pw", "secret", "token", "key", "apikey", "default", "example", "sample",
    "test", "testing", "demo", "admin", "root", "user", "guest", "letmein", "qwerty", "123456", "12345678",
    "1234567890", "none", "null", "empty", "yourpassword", "yoursecret", "yourtoken", "mypassword", "mysecret",
    "mytoken", "postgres", "postgresql", "dal", "dalsearch", "ray", "raytoken", "dashboard", "dashboardtoken",
})


class PlaceholderSecret(ValueError):
    """A secret in the environment is empty, a known placeholder, or (RAY_AUTH_TOKEN) too short."""


def normalise(value: str) -> str:
    return re.sub(r"[^a-z0-9]", "", value.lower())


def is_placeholder(value: str) -> bool:
    """True for an empty value, a known placeholder (in any case and punctuation) or one character repeated."""
    key = normalise(value)
    return not key or key in PLACEHOLDERS or key.startswith("changeme") or len(set(key)) == 1


def _storage_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed URL: the storage reports it, with its own fix
        return None
    return None if password is None else unquote(password)


def problems(environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the secrets in `environ`, one short phrase each (empty: all good or unset)."""
    found = []
    secrets = [("POSTGRES_PASSWORD", environ.get("POSTGRES_PASSWORD")),
               ("the password in DAL_SEARCH_STORAGE (POSTGRES_PASSWORD in .env)",
                _storage_password(environ["DAL_SEARCH_STORAGE"]) if "DAL_SEARCH_STORAGE" in environ else None),
               ("RAY_AUTH_TOKEN", environ.get("RAY_AUTH_TOKEN")),
               ("DAL_SEARCH_DASHBOARD_TOKEN (DASHBOARD_TOKEN in .env)", environ.get("DAL_SEARCH_DASHBOARD_TOKEN"))]
    for name, value in secrets:
        if value is None:
            continue
        if is_placeholder(value):
            found.append(f"{name} is {'empty' if not value.strip() else 'a placeholder'}")
        elif name == "RAY_AUTH_TOKEN" and len(value) < MIN_RAY_TOKEN:
            found.append(f"RAY_AUTH_TOKEN is shorter than {MIN_RAY_TOKEN} characters")
    return found


def check_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Raise PlaceholderSecret (one line: every problem, and the fix) if a secret in `environ` is unusable."""
    found = problems(os.environ if environ is None else environ)
    if found:
        raise PlaceholderSecret(f"{', '.join(found)}; put real values in .env (never the examples), each made "
                                f"with: {MAKE_ONE}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_secrets()
    except PlaceholderSecret as e:
        print(f"dal-search: error: {e}", file=sys.stderr)
        return 2
    if not argv:
        return 0
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"dal-search: error: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
