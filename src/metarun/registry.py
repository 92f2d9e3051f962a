"""Name -> factory lookup for each config group (``algo=maml`` picks ``algos["maml"]``).

A two-name contract beats a plugin framework: a module registers its factory under
the name of its yaml file, and an unknown name fails with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    """A dict of factories for one config group, filled by a decorator."""

    def __init__(self, group: str):
        self.group = group
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._factories[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.group} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._factories)
