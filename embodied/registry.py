"""A name -> entry registry filled by a decorator: embodiments, task families, layouts and constraints (envs),
planners (policies), RL algorithms, reward sources and shields (the application). A leaf like
:mod:`embodied.errors`, so every folder may use it."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from embodied.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries registered with ``@registry.register("name")``; a class entry gets ``name`` set."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(entry, type):
                entry.name = name  # type: ignore[attr-defined]
            self._entries[name] = entry
            return entry

        return deco

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; use one of: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
