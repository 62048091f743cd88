"""Registries by name: built-ins as import strings, plugins from an entry-point group.

Built-ins are ``"module:attribute"`` strings, imported on first use, so a registry never
imports its implementations up front and no implementation needs to import its registry
(no import cycle). A plugin is an installed distribution's entry point in the registry's
group; it may replace a built-in of the same name.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, cast

__all__ = ["Registry", "UnknownName", "load_string"]

T = TypeVar("T")


class UnknownName(LookupError):
    """No entry of that name; ``message`` names the entry and the known ones."""

    def __init__(self, message: str, name: str, known: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.known = known


def load_string(target: str) -> object:
    """The object a ``"module:attribute"`` string names."""
    module, _, attribute = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names to implementations of one kind (``kind`` is how errors call an entry)."""

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: Mapping[str, str],
        optional: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """``optional`` maps a built-in's name to (the module it needs, how to install it):
        without that module the built-in is left out, and asking for it says why."""
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._optional = dict(optional or {})
        self._targets: dict[str, str | EntryPoint] | None = None
        self._loaded: dict[str, T] = {}

    def _entries(self) -> dict[str, str | EntryPoint]:
        if self._targets is None:
            targets: dict[str, str | EntryPoint] = {
                name: target
                for name, target in self._builtins.items()
                if name not in self._optional
                # find_spec, not import: the module is imported only when an entry needs it
                or importlib.util.find_spec(self._optional[name][0]) is not None
            }
            for ep in entry_points(group=self.group):
                targets[ep.name] = ep  # after the built-ins: a plugin may replace one
            self._targets = targets
        return self._targets

    def names(self) -> list[str]:
        """Every available name: built-ins in their order, then plugins."""
        return list(self._entries())

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def get(self, name: str) -> T:
        """The implementation called ``name``, imported on first use."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        target = self._entries().get(name)
        if target is None:
            raise self._unknown(name)
        # Two threads may both import it: the import system makes that harmless.
        obj = cast(T, load_string(target) if isinstance(target, str) else target.load())
        self._loaded[name] = obj
        return obj

    def _unknown(self, name: str) -> UnknownName:
        known = sorted(self._entries())
        if name in self._optional:
            module, hint = self._optional[name]
            message = (
                f"{self.kind} {name!r} needs the {module} package, which is not installed: {hint}"
            )
        else:
            message = f"unknown {self.kind} {name!r}; known: {known}"
        return UnknownName(message, name, known)
