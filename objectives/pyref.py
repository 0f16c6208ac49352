"""A user's own Python object named as `module:attribute` (the `py:` datasets and models).

`module` is imported as Python imports anything (dotted names for packages), so its folder must be on
PYTHONPATH, or be the current folder under `python -m dal_search`; a worker process or Ray actor must be able
to import it too. `attribute` is a name in that module (dotted for a nested one: `Net.build`).

Every way this goes wrong (a malformed reference, a module that is missing or raises on import, a missing or
non-callable attribute) raises `error` (the caller's one-line error type) naming the reference and the fix.

Example:
    >>> fn = import_ref("math:sqrt", "dataset", ValueError)
    >>> fn(9.0)
    3.0
    >>> import_ref("math:nope", "dataset", ValueError)
    Traceback (most recent call last):
    ...
    ValueError: dataset 'py:math:nope': module 'math' has no attribute 'nope'; define it there, or name one that exists
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_REF = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")


def check_ref(ref: str, what: str, error: type[Exception], form: str = "py:MODULE:FUNCTION") -> None:
    """Raise `error` unless `ref` reads `module:attribute` (identifiers, dotted allowed); imports nothing."""
    if not isinstance(ref, str) or not _REF.match(ref):
        raise error(f"{what} 'py:{ref}' is not of the form {form} (e.g. py:mymodule:load, with mymodule.py on "
                    f"PYTHONPATH)")


def import_ref(ref: str, what: str, error: type[Exception]) -> Callable[..., Any]:
    """The callable `ref` ('module:attribute') names, imported now."""
    check_ref(ref, what, error)
    module_name, _, attr = ref.partition(":")
    where = f"{what} 'py:{ref}'"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise error(f"{where}: no module named {module_name!r} can be imported; put the folder that holds "
                        f"{module_name.split('.')[0]}.py on PYTHONPATH (e.g. PYTHONPATH=/path/to/folder)") from None
        raise error(f"{where}: importing {module_name!r} failed: {_brief(e)}; install what it imports") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing: name it, not our trace
        raise error(f"{where}: importing {module_name!r} raised {_brief(e)}; fix the module") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{where}: module {module_name!r} has no attribute {attr!r}; define it there, or name one "
                        f"that exists")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{where}: {module_name}.{attr} is a {type(obj).__name__}, not a function; name a function")
    return obj


def _brief(e: BaseException) -> str:
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["import_ref", "check_ref"]
