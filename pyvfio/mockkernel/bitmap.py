"""Dirty bitmaps as the kernel writes them to user space: u64 words, bitmap_set, user buffers."""

from __future__ import annotations

import errno

import numpy as np

from ..uapi import ffi
from .core import KernelError
from .memory import user_mapped

U64 = (1 << 64) - 1


def words_for(npages: int) -> int:
    return (npages + 63) // 64


def bytes_for(npages: int) -> int:
    """DIRTY_BITMAP_BYTES: ALIGN(npages, 64) / 8."""
    return words_for(npages) * 8


_FULL = np.uint64(U64)


def set_bits(words: np.ndarray, first: int, n: int) -> None:
    """bitmap_set: bits first..first+n-1 of u64 ``words``. (The mock sits below pyvfio.services,
    so it does not use services.bitmap; this is the kernel's own primitive.)"""
    if n <= 0:
        return
    last = first + n - 1
    fw, lw = first >> 6, last >> 6
    lo = np.uint64((U64 << (first & 63)) & U64)
    hi = np.uint64(U64 >> (63 - (last & 63)))
    if fw == lw:
        words[fw] |= lo & hi
        return
    words[fw] |= lo
    words[fw + 1:lw] = _FULL
    words[lw] |= hi


def user_words(addr: int, nbytes: int) -> np.ndarray:
    """The user's bitmap as u64 words (EFAULT when not mapped, like copy_to_user)."""
    if addr == 0 or addr % 8 or not user_mapped(addr, max(nbytes, 1)):
        raise KernelError(errno.EFAULT, f"type1: dirty bitmap at {addr:#x}+{nbytes} not writable")
    return np.frombuffer(ffi.buffer(ffi.cast("char *", addr), nbytes // 8 * 8), dtype="<u8")


__all__ = ["U64", "words_for", "bytes_for", "set_bits", "user_words"]
