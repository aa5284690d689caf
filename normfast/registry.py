"""Small string-keyed registries (sources, formats, backends, settings, models).

An unknown name raises a NormfastError that lists the valid ones.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterable, TypeVar

from normfast.errors import NormfastError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise NormfastError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def parse_list(value: str | Iterable[str], registry: Registry) -> list[str]:
    """'a,b' or ['a','b'] -> validated list of names (unknown names raise)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        registry.get(n)
    return names
