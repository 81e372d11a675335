"""Numbers at the boundary: integers checked before a uAPI struct (or a syscall) sees them.

cffi refuses what a C field cannot hold with a bare ``OverflowError`` (-1 into a ``__u32``,
``2**64`` into a ``__u64``) or ``TypeError`` (a float, None). pyvfio's callers get the typed
errors instead, naming the field and what it allows:

* :func:`as_int`: ``operator.index`` (ints, numpy integers; not floats, None or strings), else
  :class:`~pyvfio.errors.ArgumentError`;
* :func:`check_int`: the same plus a range, else :class:`~pyvfio.errors.RangeError`;
* :func:`new` / :func:`fill`: a struct filled field by field, each value checked against the
  field's C type (one try block; the field-by-field diagnosis runs only on failure);
* :func:`struct_error`: for hot paths that assign fields themselves inside
  ``try: ... except (OverflowError, TypeError):`` -- the typed error for what went wrong.

>>> p = new("struct vfio_irq_info", argsz=16, index=2)
>>> (p.argsz, p.index)
(16, 2)
>>> new("struct vfio_irq_info", index=2**32)
Traceback (most recent call last):
...
pyvfio.errors.RangeError: struct vfio_irq_info.index 0x100000000 is outside 0..0xffffffff (uint32_t)
>>> new("struct vfio_irq_info", index=1.5)
Traceback (most recent call last):
...
pyvfio.errors.ArgumentError: struct vfio_irq_info.index must be an integer, not 1.5
"""

from __future__ import annotations

import operator
from functools import lru_cache
from typing import Any

from ..errors import ArgumentError, RangeError
from . import ffi

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1


def as_int(value: Any, what: str) -> int:
    """``operator.index(value)``: an int (numpy integers accepted), else ArgumentError."""
    if value.__class__ is int:
        return value  # type: ignore[no-any-return]
    if value is None or isinstance(value, (bool, float, str, bytes)):
        raise ArgumentError(f"{what} must be an integer, not {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ArgumentError(f"{what} must be an integer, not {value!r}") from None


def check_int(value: Any, what: str, lo: int = 0, hi: int = U64_MAX) -> int:
    """:func:`as_int`, then RangeError outside ``lo..hi``."""
    v = as_int(value, what)
    if not lo <= v <= hi:
        raise RangeError(f"{what} {_fmt(v)} is outside {_fmt(lo)}..{_fmt(hi)}")
    return v


def u32(value: Any, what: str) -> int:
    return check_int(value, what, 0, U32_MAX)


def u64(value: Any, what: str) -> int:
    return check_int(value, what, 0, U64_MAX)


def _fmt(v: int) -> str:
    return f"{v:#x}" if v > 9 else (f"-{-v:#x}" if v < -9 else str(v))


@lru_cache(maxsize=None)
def type_range(cname: str) -> tuple[int, int]:
    """(lowest, highest) value of the integer C type ``cname``."""
    bits = ffi.sizeof(cname) * 8
    if int(ffi.cast(cname, -1)) < 0:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@lru_cache(maxsize=None)
def _fields(ctype: str) -> dict[str, Any]:
    return {name: f.type for name, f in ffi.typeof(ctype).fields}


def _field_error(ctype: str, name: str, value: Any) -> Exception | None:
    """The typed error for assigning ``value`` to ``ctype.name``, or None if it fits."""
    what = f"{ctype}.{name}"
    t = _fields(ctype).get(name)
    if t is None:
        return ArgumentError(f"{ctype} has no field {name!r}")
    if t.kind not in ("primitive", "enum"):
        return None  # pointers, arrays, nested structs: cffi's own checks
    try:
        v = as_int(value, what)
    except ArgumentError as e:
        return e
    lo, hi = type_range(t.cname)
    if not lo <= v <= hi:
        return RangeError(f"{what} {_fmt(v)} is outside {_fmt(lo)}..{_fmt(hi)} ({t.cname})")
    return None


def struct_error(p: Any, fields: dict[str, Any], exc: BaseException | None = None) -> Exception:
    """After assigning ``fields`` to the struct behind ``p`` failed: the typed error naming the
    first field that does not fit (ArgumentError for a non-integer, RangeError out of range)."""
    ctype = ffi.typeof(p)
    if ctype.kind == "pointer":
        ctype = ctype.item
    name = ctype.cname
    for k, v in fields.items():
        err = _field_error(name, k, v)
        if err is not None:
            return err
    return ArgumentError(f"bad arguments for {name}: {exc}")


def fill(p: Any, **fields: Any) -> Any:
    """Assign ``fields`` to the struct behind ``p``; typed errors instead of cffi's (see module)."""
    try:
        for k, v in fields.items():
            setattr(p, k, v)
    except (OverflowError, TypeError, AttributeError) as e:
        raise struct_error(p, fields, e) from None
    return p


def new(ctype: str, **fields: Any) -> Any:
    """``ffi.new(ctype + " *")`` with ``fields`` filled through :func:`fill`."""
    return fill(ffi.new(ctype + " *"), **fields)


__all__ = ["as_int", "check_int", "u32", "u64", "new", "fill", "struct_error", "type_range",
           "U32_MAX", "U64_MAX"]
