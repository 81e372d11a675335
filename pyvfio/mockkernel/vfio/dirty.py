"""Mock dirty-page tracking: type1's VFIO_IOMMU_DIRTY_PAGES and device DMA logging.

Two trackers, each marked for real by the simulated devices' DMA writes:

* **type1** (drivers/vfio/vfio_iommu_type1.c). Every mapping gets a bitmap of its pages at the
  smallest IOMMU page size while tracking is on; the IOMMU marks the pages a device *writes*
  (:func:`mark`, called from the mock type1's ``translate(..., write=True)``, like a hardware
  IOMMU setting the dirty bit of a PTE on a write translation). Rules and errnos reproduced:

  - DIRTY_PAGES on a v1 container → EACCES; argsz below the header, unknown flags, no flag or
    more than one flag → EINVAL; START/STOP are idempotent (0).
  - START fails with EINVAL when a mapping has more than INT_MAX pages (vfio_dma_bitmap_alloc;
    the same check at MAP_DMA time while tracking is not reproduced). Bitmaps are allocated
    lazily, the first time a write or a report needs them: same answers as allocating at
    START/MAP (a mapping made while tracking starts clean).
  - GET_BITMAP: argsz without room for ``vfio_iommu_type1_dirty_bitmap_get`` → EINVAL;
    iova+size wraps → EINVAL; ``verify_bitmap_size`` (no page, bitmap size 0, above
    DIRTY_BITMAP_SIZE_MAX or smaller than ALIGN(npages, 64)/8) → EINVAL; pgsize other than the
    smallest IOMMU page → EINVAL; iova/size unaligned or size 0 → EINVAL; tracking off →
    EINVAL; a range that bisects a mapping (first or last) → EINVAL. Holes are fine: only the
    words a mapping covers are written (``update_user_bitmap``: whole words, the bits below the
    mapping's first bit in its first word kept from the user buffer), the rest of the user
    buffer is left as it was. Reporting clears the mapping's bitmap.
  - UNMAP_DMA with GET_DIRTY_BITMAP: with ALL or VADDR → EINVAL; argsz without the
    ``vfio_bitmap`` → EINVAL; verify_bitmap_size on ``size >> ffs(pgsize)`` → EINVAL; then the
    unmap rules (alignment, size, wrap → EINVAL), tracking off or pgsize not the smallest
    IOMMU page → EINVAL, v2 bisection → EINVAL; each mapping's bits are written as for
    GET_BITMAP relative to ``iova``, then it is removed; ``size`` returns the bytes unmapped.
  - An unmapped user bitmap gives EFAULT (copy_to_user).

  Semantics knob (:func:`set_semantics`): ``"exact"`` (default) reports exactly the pages the
  simulated DMA engines wrote since the last report; ``"pinned"`` is what the real kernel does
  with a vfio-pci device and no vendor driver (``num_non_pinned_groups > 0``): every page of
  every mapping is reported dirty at each report, written or not.

Device DMA logging lives with the vfio-pci device file (:mod:`pyvfio.mockkernel.pci.logging`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import ioctls
from ...uapi import ffi
from ..core import KernelError, MockKernel
from ..bitmap import U64, bytes_for, set_bits, user_words, words_for

NAME = "dirty"
#: DIRTY_BITMAP_PAGES_MAX of the kernel (INT_MAX bits) and DIRTY_BITMAP_SIZE_MAX (256 MiB).
DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1
DIRTY_BITMAP_SIZE_MAX = (DIRTY_BITMAP_PAGES_MAX + 63) // 64 * 8
SEMANTICS = ("exact", "pinned")

_DIRTY_HDR = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "data")
_GET_SZ = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get")
_UNMAP_MINSZ = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size") + 8
_VBITMAP_SZ = ffi.sizeof("struct vfio_bitmap")
_SH = [np.uint64(i) for i in range(65)]


@dataclass
class DirtyConfig:
    """Per-kernel settings of the mock's dirty tracking."""

    semantics: str = "exact"


def config(kernel: MockKernel) -> DirtyConfig:
    cfg = kernel.state.get(NAME)
    if cfg is None:
        cfg = kernel.state[NAME] = DirtyConfig()
    return cfg


def set_semantics(kernel: MockKernel, semantics: str) -> None:
    """``"exact"``: report the pages DMA wrote; ``"pinned"``: every mapped page (the real
    type1 without a vendor driver)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics {semantics!r} must be one of {SEMANTICS}")
    config(kernel).semantics = semantics


def _ffs(x: int) -> int:
    return (x & -x).bit_length() - 1


def _verify_bitmap_size(npages: int, size: int) -> None:
    if not npages or not size or size > DIRTY_BITMAP_SIZE_MAX or size < bytes_for(npages):
        raise KernelError(errno.EINVAL, f"type1: dirty bitmap of {size} bytes for {npages} pages")


# ---------------------------------------------------------------------------------------------
# type1
# ---------------------------------------------------------------------------------------------


def _bitmap(iommu: Any, e: Any) -> np.ndarray:
    """The mapping's dirty words (allocated the first time tracking needs them)."""
    words = e.state.get(NAME)
    if words is None:
        npages = e.size // iommu.min_pgsize
        words = e.state[NAME] = np.zeros(words_for(npages) + 1, dtype="<u8")
    return words


def mark(iommu: Any, iova: int, size: int) -> None:
    """A device wrote [iova, iova+size): set the pages' bits in the mappings' bitmaps (only while
    tracking is on). Called by the mock type1's translate() on write."""
    if not iommu.dirty_page_tracking or size <= 0:
        return
    pg = iommu.min_pgsize
    end = iova + size
    pos = iova
    while pos < end:
        e = iommu._find(pos)
        if e is None:
            return
        last = min(end, e.end) - 1
        first_page = (pos - e.iova) // pg
        n = (last - e.iova) // pg - first_page + 1
        set_bits(_bitmap(iommu, e), first_page, n)
        pos = e.end


def _update_user_bitmap(user: np.ndarray, iommu: Any, e: Any, base: int, pgsize: int) -> None:
    """update_user_bitmap: the mapping's bits at their offset from ``base``, whole words."""
    nbits = e.size // pgsize
    bit_offset = (e.iova - base) // pgsize
    copy_offset, shift = divmod(bit_offset, 64)
    nw = words_for(nbits)
    src = _bitmap(iommu, e)[:nw]
    if config(iommu.kernel).semantics == "pinned":
        # num_non_pinned_groups && iommu_mapped: every page is reported dirty
        set_bits(src, 0, nbits)
    out_n = words_for(nbits + shift)
    if copy_offset + out_n > user.size:
        raise KernelError(errno.EFAULT, "type1: dirty bitmap shorter than the range")
    dst = user[copy_offset:copy_offset + out_n]
    if shift == 0:
        dst[:] = src[:out_n]
    else:
        keep = dst[0] & np.uint64((1 << shift) - 1)
        out = np.zeros(out_n, dtype="<u8")
        out[:nw] = src << _SH[shift]
        out[1:] |= src[:out_n - 1] >> _SH[64 - shift]
        out[0] |= keep
        dst[:] = out
    src[:] = 0  # re-populated with the vfio_pin_pages() pages: none in the mock


def _check_bisect(iommu: Any, iova: int, size: int, what: str) -> None:
    first = iommu._find(iova)
    if first is not None and first.iova != iova:
        raise KernelError(errno.EINVAL, f"type1: {what} range bisects the mapping at {first.iova:#x}")
    last = iommu._find(iova + size - 1)
    if last is not None and last.end != iova + size:
        raise KernelError(errno.EINVAL, f"type1: {what} range bisects the mapping at {last.iova:#x}")


def type1_dirty_pages(iommu: Any, arg: Any) -> int:
    """VFIO_IOMMU_DIRTY_PAGES on a type1 container (vfio_iommu_type1_dirty_pages)."""
    if not iommu.v2:
        raise KernelError(errno.EACCES, "type1: DIRTY_PAGES needs a type1v2 container")
    d = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", arg)
    mask = (ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
            | ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
    flags = int(d.flags)
    if d.argsz < _DIRTY_HDR or flags & ~mask:
        raise KernelError(errno.EINVAL, "type1: DIRTY_PAGES argsz/flags invalid")
    if not flags or flags & (flags - 1):
        raise KernelError(errno.EINVAL, "type1: DIRTY_PAGES needs exactly one flag")
    pg = iommu.min_pgsize
    if flags == ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_START:
        if not iommu.dirty_page_tracking:
            for e in iommu.entries():
                if e.size // pg > DIRTY_BITMAP_PAGES_MAX:
                    raise KernelError(errno.EINVAL, f"type1: mapping at {e.iova:#x} too large to track")
            iommu.dirty_page_tracking = True
        return 0
    if flags == ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP:
        if iommu.dirty_page_tracking:
            iommu.dirty_page_tracking = False
            for e in iommu.entries():
                e.state.pop(NAME, None)
        return 0
    if d.argsz - _DIRTY_HDR < _GET_SZ:
        raise KernelError(errno.EINVAL, "type1: GET_BITMAP argsz has no room for the range")
    r = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", d.data)
    iova, size = int(r.iova), int(r.size)
    pgsize, bsize = int(r.bitmap.pgsize), int(r.bitmap.size)
    if iova + size > U64:
        raise KernelError(errno.EINVAL, "type1: GET_BITMAP range wraps")
    if not pgsize:
        raise KernelError(errno.EINVAL, "type1: GET_BITMAP pgsize 0")
    _verify_bitmap_size(size >> _ffs(pgsize), bsize)
    if pgsize != pg:
        raise KernelError(errno.EINVAL, f"type1: GET_BITMAP pgsize {pgsize:#x} is not {pg:#x}")
    if iova & (pg - 1) or not size or size & (pg - 1):
        raise KernelError(errno.EINVAL, "type1: GET_BITMAP range unaligned or empty")
    if not iommu.dirty_page_tracking:
        raise KernelError(errno.EINVAL, "type1: GET_BITMAP while dirty tracking is off")
    _check_bisect(iommu, iova, size, "GET_BITMAP")
    victims = [e for e in iommu.entries() if iova <= e.iova <= iova + size - 1]
    if victims:
        user = user_words(int(ffi.cast("uintptr_t", r.bitmap.data)), bsize)
        for e in victims:
            _update_user_bitmap(user, iommu, e, iova, pgsize)
    return 0


def type1_unmap_with_bitmap(iommu: Any, u: Any) -> int:
    """VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP (vfio_dma_do_unmap)."""
    flags = int(u.flags)
    if flags & (ioctls.VFIO_DMA_UNMAP_FLAG_ALL | ioctls.VFIO_DMA_UNMAP_FLAG_VADDR):
        raise KernelError(errno.EINVAL, "type1: GET_DIRTY_BITMAP with UNMAP ALL/VADDR")
    if u.argsz < _UNMAP_MINSZ + _VBITMAP_SZ:
        raise KernelError(errno.EINVAL, "type1: UNMAP_DMA argsz has no room for the bitmap")
    bm = ffi.cast("struct vfio_bitmap *", u.data)
    pgsize, bsize = int(bm.pgsize), int(bm.size)
    iova, size = int(u.iova), int(u.size)
    if not pgsize:
        raise KernelError(errno.EINVAL, "type1: UNMAP bitmap pgsize 0")
    _verify_bitmap_size(size >> _ffs(pgsize), bsize)
    pg = iommu.min_pgsize
    if iova & (pg - 1) or not size or size & (pg - 1) or iova + size - 1 > U64:
        raise KernelError(errno.EINVAL, "type1: UNMAP_DMA unaligned, empty or wrapping")
    if not iommu.dirty_page_tracking or pgsize != pg:
        raise KernelError(errno.EINVAL, "type1: UNMAP with bitmap needs tracking on and the "
                                        "smallest IOMMU page size")
    if iommu.v2:
        _check_bisect(iommu, iova, size, "UNMAP_DMA")
    victims = [e for e in iommu.entries() if e.end > iova and e.iova < iova + size]
    unmapped = 0
    user = user_words(int(ffi.cast("uintptr_t", bm.data)), bsize) if victims else None
    for e in victims:
        if user is not None:
            _update_user_bitmap(user, iommu, e, iova, pgsize)
        unmapped += e.size
        iommu._remove(e)
    u.size = unmapped
    return 0


__all__ = ["DirtyConfig", "config", "set_semantics", "mark", "type1_dirty_pages",
           "type1_unmap_with_bitmap", "DIRTY_BITMAP_SIZE_MAX", "SEMANTICS"]
