"""User memory as the mock kernel sees it: is an address range mapped (pin_user_pages,
copy_{to,from}_user), and reading or writing it.

One question answered in one place: :func:`user_mapped` asks mincore(2) (microseconds; ENOMEM
means a page of the range is not mapped) and falls back to /proc/self/maps, which also answers
the permission question copy_{to,from}_user asks (a PROT_NONE guard page is mapped but faults).
"""

from __future__ import annotations

import errno

from ..uapi import ffi, lib

PAGE_SIZE = 4096

def _maps_cover(addr: int, size: int, perms: str = "") -> bool:
    """[addr, addr+size) lies in mappings of this process having ``perms`` (/proc/self/maps)."""
    end = addr + size
    spans: list[tuple[int, int, bool]] = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 2)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi > addr and lo < end:
                spans.append((lo, hi, all(p in parts[1] for p in perms)))
    cur = addr
    for lo, hi, ok in sorted(spans):
        if hi <= cur:
            continue
        if lo > cur or not ok:
            return False
        cur = hi
        if cur >= end:
            return True
    return cur >= end


def user_mapped(addr: int, size: int, perms: str = "") -> bool:
    """True if [addr, addr+size) is mapped in this process, with ``perms`` ("r", "w", "rw")
    when given (what copy_{to,from}_user need); an empty range is mapped."""
    if size <= 0:
        return True
    if perms:
        return _maps_cover(addr, size, perms)
    off = addr & (PAGE_SIZE - 1)
    vec = ffi.new("unsigned char[]", (size + off + PAGE_SIZE - 1) // PAGE_SIZE + 1)
    if lib.mincore(ffi.cast("void *", addr - off), size + off, vec) == 0:
        return True
    if ffi.errno == errno.ENOMEM:
        return False
    return _maps_cover(addr, size)


def read_user(addr: int, size: int) -> bytes:
    """copy_from_user of ``size`` bytes at ``addr`` (the caller checked the range)."""
    return bytes(ffi.buffer(ffi.cast("char *", addr), size))


def write_user(addr: int, data: bytes) -> None:
    """copy_to_user of ``data`` at ``addr`` (the caller checked the range)."""
    ffi.memmove(ffi.cast("char *", addr), data, len(data))


__all__ = ["user_mapped", "read_user", "write_user", "PAGE_SIZE"]
