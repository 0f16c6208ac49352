"""One registry per kind of extensible thing: losses, schedule shapes, noise kinds, datasets, models.

A thing exists once, where it is defined: the decorated function or class registers itself with its name,
a title, a one-line help and what its kind needs (a loss's config fields and default search space, a
dataset's default model ...). Every list of names, help text, validation message and default search space
in dal-search derives from these registries, so adding a loss is one decorated function in losses.py:

    >>> REG = Registry("example")
    >>> @REG.register("double", help="twice its input", scale=2)
    ... def double(x):
    ...     return 2 * x
    >>> REG.names(), REG["double"].meta["scale"], REG["double"].obj(3)
    (('double',), 2, 6)
    >>> REG.resolve("triple")
    Traceback (most recent call last):
    ...
    dal_search.objectives.registry.UnknownName: unknown example 'triple'; choose one of: double

A name may also be a prefix that takes an argument (`folder:PATH`, `py:module:function`): register it with
`prefix=True`; `resolve("folder:/data")` returns the entry and "/data". Exact names win over prefixes, and a
prefix needs a non-empty argument.

This module imports nothing heavy: listing names costs nothing until the defining modules are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence


class UnknownName(ValueError):
    """A name no entry of the registry answers to; the message lists the names that exist."""


@dataclass(frozen=True)
class Entry:
    """One registered thing: `obj` is the function or class, `meta` what its kind records about it."""

    name: str
    obj: Any
    title: str
    help: str
    prefix: bool = False
    meta: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)


class Registry:
    """Name -> Entry for one kind of thing, in registration order (which is the order lists are shown in)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, title: str | None = None, help: str = "",
                 prefix: bool = False, replace: bool = False, **meta: Any) -> Any:
        """Register `obj` as `name` (or, without `obj`, return a decorator that does). A name that exists
        already is an error unless `replace=True` (so two modules cannot silently fight over one name)."""
        if not name or any(c.isspace() for c in name) or (prefix and ":" in name):
            raise ValueError(f"{self.kind} name {name!r} must be non-empty without spaces (a prefix without ':')")

        def add(o: Any) -> Any:
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is registered already; pass replace=True to replace it")
            self._entries[name] = Entry(name, o, title or name, help, prefix, dict(meta))
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Forget `name` (a notebook's experiment, a test); an unknown name is an error."""
        if name not in self._entries:
            raise UnknownName(self._unknown(name))
        del self._entries[name]

    def __getitem__(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None or entry.prefix:
            raise UnknownName(self._unknown(name))
        return entry

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.resolve(name)
        except UnknownName:
            return False
        return True

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        """(entry, argument): the entry `name` names exactly (argument None), or the prefix entry of
        `prefix:ARG` with ARG. Raises UnknownName with the list of what exists."""
        entry = self._entries.get(name)
        if entry is not None and not entry.prefix:
            return entry, None
        head, sep, arg = name.partition(":") if isinstance(name, str) else ("", "", "")
        entry = self._entries.get(head)
        if sep and entry is not None and entry.prefix:
            if not arg:
                raise UnknownName(f"{self.kind} {name!r} needs something after '{head}:' ({entry.help})")
            return entry, arg
        raise UnknownName(self._unknown(name))

    def names(self, prefixes: bool = False) -> tuple[str, ...]:
        """Exact names in registration order; with `prefixes`, the prefix forms too (as 'folder:...')."""
        return tuple(e.name if not e.prefix else f"{e.name}:..." for e in self._entries.values()
                     if prefixes or not e.prefix)

    def choices(self) -> str:
        """The names for a message or a --help text: 'a, b, c' (and 'folder:PATH ...' for prefixes)."""
        plain = [e.name for e in self._entries.values() if not e.prefix]
        forms = [e.get("form", f"{e.name}:ARG") for e in self._entries.values() if e.prefix]
        return ", ".join(plain) + (", or " + ", ".join(forms) if forms else "")

    def titles(self) -> dict[str, str]:
        return {e.name: e.title for e in self._entries.values() if not e.prefix}

    def order(self, name: str) -> int:
        """Sort key: registration order, unknown names last."""
        names = list(self._entries)
        return names.index(name) if name in self._entries else len(names)

    def _unknown(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}; choose one of: {self.choices()}"


class TitleView(Mapping):
    """name -> title of a registry, read at each use: a thing registered later (a user's loss) shows up too,
    and the defining modules are imported only when the view is first read."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> str:
        return self._registry().titles()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry().titles())

    def __len__(self) -> int:
        return len(self._registry().titles())


class NameView(Sequence):
    """The exact names of a registry in registration order, read at each use (see TitleView)."""

    def __init__(self, registry: Callable[[], Registry]) -> None:
        self._registry = registry

    def __getitem__(self, i):  # type: ignore[override]
        return self._registry().names()[i]

    def __len__(self) -> int:
        return len(self._registry().names())


def load_all() -> dict[str, Registry]:
    """Every registry, with the modules that fill them imported (this imports torch)."""
    from dal_search.objectives import data, losses, models, noise, schedules

    return {"loss": losses.LOSSES, "schedule": schedules.SCHEDULES, "noise": noise.NOISE_KINDS,
            "dataset": data.DATASETS, "model": models.MODELS}


__all__ = ["Registry", "Entry", "UnknownName", "TitleView", "NameView", "load_all"]
