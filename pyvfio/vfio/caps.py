"""VFIO info structs with a capability chain: the argsz re-call and one guarded chain walker.

VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_REGION_INFO and VFIO_IOMMU_GET_INFO answer the same way:
the caller sets ``argsz``; when the capability chain does not fit, the kernel raises ``argsz``
to the size it needs and the caller asks again. The chain is a list of
``struct vfio_info_cap_header`` (id, version, next) whose offsets count from the start of the
info struct; ``next == 0`` ends it.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import PyvfioError
from ..uapi import ffi
from ..util.hexrepr import hex_repr

#: at most this many capabilities in one chain
MAX_CAPS = 64
#: at most this many calls (the first and the re-calls with the size the kernel asked for)
MAX_CALLS = 4
#: a kernel asking for more than this argsz is not believed
MAX_ARGSZ = 1 << 20
_SZ_CAPHDR = ffi.sizeof("struct vfio_info_cap_header")


class CapChainError(PyvfioError):
    """A capability chain the kernel returned is malformed (out of bounds or cyclic), or the
    argsz it asks for keeps growing."""


@hex_repr('offset')
@dataclass(frozen=True)
class InfoCapability:
    """One entry of a VFIO info capability chain: ``id``, ``version``, where it sat, its payload."""

    id: int
    version: int
    offset: int
    data: bytes = field(repr=False)


def walk_info_caps(buf: bytes, first: int, header_size: int, *, op: str | None = None,
                   path: str | None = None) -> tuple[InfoCapability, ...]:
    """Parse a VFIO info capability chain in ``buf`` starting at offset ``first``.

    Offsets are from the start of the info struct; the chain ends at ``next == 0``. Every header
    must be 4-byte aligned and lie after the fixed struct (``header_size``) and inside ``buf``;
    a repeated offset (a cycle), more than :data:`MAX_CAPS` entries or more headers than ``buf``
    could hold raise CapChainError (EPROTO) instead of looping. A capability's payload runs to
    the next header (the last one's to the end of ``buf``).
    """
    caps: list[InfoCapability] = []
    seen: set[int] = set()
    total = len(buf)
    off = first
    while off:
        if off in seen or len(seen) >= MAX_CAPS or len(seen) > total // _SZ_CAPHDR:
            raise CapChainError(errno.EPROTO, f"capability chain loops at offset {off:#x}", op=op,
                                path=path, hint=f"offset {off:#x} seen twice, or over {MAX_CAPS} entries")
        if off < header_size or off + _SZ_CAPHDR > total or off % 4:
            raise CapChainError(errno.EPROTO, "capability chain out of bounds", op=op, path=path,
                                hint=f"capability at {off:#x} outside {header_size:#x}..{total:#x} "
                                     "(or not 4-byte aligned)")
        seen.add(off)
        # kernel structs are in CPU byte order
        cid = int.from_bytes(buf[off:off + 2], sys.byteorder)
        ver = int.from_bytes(buf[off + 2:off + 4], sys.byteorder)
        nxt = int.from_bytes(buf[off + 4:off + 8], sys.byteorder)
        end = nxt if nxt > off else total
        caps.append(InfoCapability(cid, ver, off, bytes(buf[off + _SZ_CAPHDR:end])))
        off = nxt
    return tuple(caps)


def get_info(ioctl: Callable[[Any], object], ctype: str, caps_flag: int, *, op: str,
             path: str | None = None, fill: Callable[[Any], None] | None = None
             ) -> tuple[Any, Any, tuple[InfoCapability, ...]]:
    """Issue a VFIO ``*_GET_*INFO`` ioctl on a ``ctype`` struct with a capability chain.

    ``ioctl(info)`` issues the request; ``fill(info)`` sets input fields (``index``...) before
    each call; ``argsz`` is set here. Called again with the argsz the kernel asks for, at most
    :data:`MAX_CALLS` times and up to :data:`MAX_ARGSZ` bytes (CapChainError otherwise). The
    chain is walked when ``flags & caps_flag`` and ``cap_offset`` are set.

    Returns ``(raw, info, caps)``: the ``char[]`` buffer (keep it alive while ``info``, a
    ``ctype *`` into it, is used), the struct, and the parsed chain.
    """
    fixed = ffi.sizeof(ctype)
    size = fixed
    for _ in range(MAX_CALLS):
        raw = ffi.new("char[]", size)
        info = ffi.cast(f"{ctype} *", raw)
        info.argsz = size
        if fill is not None:
            fill(info)
        ioctl(info)
        if info.argsz <= size:
            caps: tuple[InfoCapability, ...] = ()
            if info.flags & caps_flag and info.cap_offset:
                caps = walk_info_caps(ffi.buffer(raw, size)[:], int(info.cap_offset), fixed,
                                      op=op, path=path)
            return raw, info, caps
        if info.argsz > MAX_ARGSZ:
            raise CapChainError(errno.EPROTO, f"{op} asks for argsz {info.argsz}", op=op, path=path)
        size = int(info.argsz)
    raise CapChainError(errno.EPROTO, f"{op} argsz keeps growing", op=op, path=path)


__all__ = ["CapChainError", "InfoCapability", "get_info", "walk_info_caps", "MAX_CAPS"]
