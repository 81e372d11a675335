"""Dataclass reprs that print addresses, sizes, offsets and page-size masks in hex.

>>> from dataclasses import dataclass
>>> @hex_repr("iova", "size")
... @dataclass(frozen=True)
... class Span:
...     iova: int
...     size: int
...     count: int
>>> Span(0x100000, 0x200000, 3)
Span(iova=0x100000, size=0x200000, count=3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

T = TypeVar("T")

__all__ = ["hex_repr"]


def hex_repr(*names: str) -> Callable[[type[T]], type[T]]:
    """Class decorator (above ``@dataclass``): the repr shows the int fields ``names`` as hex
    (None and enum flags keep their own repr), the other fields as the dataclass would."""

    def deco(cls: type[T]) -> type[T]:
        shown = [f.name for f in dataclasses.fields(cls) if f.repr]  # type: ignore[arg-type]
        unknown = set(names) - set(shown)
        if unknown:
            raise TypeError(f"{cls.__name__} has no repr field {sorted(unknown)}")
        hexed = frozenset(names)

        def __repr__(self: Any) -> str:
            parts = []
            for n in shown:
                v = getattr(self, n)
                if n in hexed and type(v) is int:
                    parts.append(f"{n}={v:#x}")
                else:
                    parts.append(f"{n}={v!r}")
            return f"{type(self).__qualname__}({', '.join(parts)})"

        cls.__repr__ = __repr__  # type: ignore[assignment]
        return cls

    return deco
