"""The buffer protocol of DMA mappings: what ``map()`` of every IOMMU accepts.

A *buffer* is either

* an object with ``addr`` (its virtual address) and ``size`` (bytes), optionally ``closed``
  (a closed buffer is refused) and the pin hooks ``_pin(mapping)`` / ``_unpin(mapping)``, which
  the IOMMU objects call when a mapping starts and stops using the buffer (a DmaBuffer refuses
  to close while pinned); or
* a plain ``int`` address, with an explicit ``size``.

:func:`buffer_span` turns a buffer, ``size`` and ``offset`` into the ``(vaddr, nbytes)`` to map,
raising ArgumentError subclasses before any syscall; :func:`pin` / :func:`unpin` run the hooks.

>>> class Buf:
...     addr, size = 0x10000, 0x4000
>>> hex(buffer_span(Buf(), None, 0x1000)[0]), buffer_span(Buf(), None, 0x1000)[1]
('0x11000', 12288)
>>> buffer_span(0x20000, 4096, 0)
(131072, 4096)
"""

from __future__ import annotations

from typing import Any

from ..errors import ArgumentError, RangeError, StateError
from ..uapi.args import as_int


def buffer_span(buffer: Any, size: int | None, offset: int) -> tuple[int, int]:
    """``(vaddr, nbytes)`` of ``size`` bytes (None: the rest) at ``offset`` of ``buffer``.

    Errors: ArgumentError (not a buffer; an int address without ``size``), StateError (the
    buffer is closed), RangeError (``offset``/``size`` outside the buffer).
    """
    offset = as_int(offset, "offset")
    if size is not None:
        size = as_int(size, "size")
    try:
        addr, total = buffer.addr, buffer.size
    except AttributeError:
        if isinstance(buffer, int) and not isinstance(buffer, bool) or hasattr(buffer, "__index__"):
            if size is None:
                raise ArgumentError("mapping a raw address needs size=") from None
            return as_int(buffer, "address") + offset, size
        raise ArgumentError(f"cannot map {type(buffer).__name__}: pass a DmaBuffer (or an object "
                            "with .addr and .size) or an int address with size=") from None
    if getattr(buffer, "closed", False):
        raise StateError(f"{buffer!r} is closed")
    if offset < 0 or offset > total:
        raise RangeError(f"offset {offset:#x} outside the buffer (size {total:#x})")
    n = total - offset if size is None else size
    if n > total - offset:
        raise RangeError(f"size {n:#x} at offset {offset:#x} runs past the buffer (size {total:#x})")
    return int(addr) + offset, n


def pin(buffer: Any, mapping: Any) -> None:
    """Tell ``buffer`` that ``mapping`` now uses it (its ``_pin`` hook, if any). The hook may
    raise (the buffer was closed meanwhile): the caller then undoes the kernel mapping."""
    hook = getattr(buffer, "_pin", None)
    if hook is not None:
        hook(mapping)


def unpin(buffer: Any, mapping: Any) -> None:
    """Tell ``buffer`` that ``mapping`` no longer uses it (its ``_unpin`` hook, if any)."""
    hook = getattr(buffer, "_unpin", None)
    if hook is not None:
        hook(mapping)


__all__ = ["buffer_span", "pin", "unpin"]
