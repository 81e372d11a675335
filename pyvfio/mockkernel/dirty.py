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

* **device DMA logging** (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT, drivers/vfio/
  vfio_main.c with a log_ops driver modelled on mlx5/pds). Off for every simulated device unless
  :func:`enable_device_logging` gave it a logger (QEMU's edu has none: the real kernel answers
  ENOTTY, as the mock does by default). Core rules: ENOTTY without a logger; the
  vfio_check_feature rules (START/STOP are SET-only, REPORT GET-only, PROBE answers 0, neither
  GET nor SET → EINVAL, argsz below the payload → EINVAL); START: no range → EINVAL, more than
  LOG_MAX_RANGES (PAGE_SIZE / 16 = 256) → E2BIG, a range not aligned to page_size → EINVAL, an
  overflowing range → EOVERFLOW, overlapping ranges → EINVAL. Driver rules (mlx5-like):
  starting twice → EINVAL; page_size is rounded up to a size the device tracks and written
  back; more ranges than the device's ``max_ranges`` are combined by closing the smallest gaps
  (vfio_combine_iova_ranges), so a gap between combined ranges is tracked too; REPORT while not
  logging → EINVAL; page_size below 4 KiB or not a power of two → EINVAL; iova+length overflow
  → EOVERFLOW; REPORT sets (ORs) the bits of the pages written inside [iova, iova+length) and
  clears them in the device's log; STOP while not logging → 0.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ioctls
from ..uapi import ffi
from .core import KernelError, MockKernel

NAME = "dirty"
U64 = (1 << 64) - 1
#: DIRTY_BITMAP_PAGES_MAX of the kernel (INT_MAX bits) and DIRTY_BITMAP_SIZE_MAX (256 MiB).
DIRTY_BITMAP_PAGES_MAX = (1 << 31) - 1
DIRTY_BITMAP_SIZE_MAX = (DIRTY_BITMAP_PAGES_MAX + 63) // 64 * 8
#: vfio_main.c: ranges must fit into one kernel page.
LOG_MAX_RANGES = 4096 // 16
SEMANTICS = ("exact", "pinned")

_DIRTY_HDR = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "data")
_GET_SZ = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get")
_UNMAP_MINSZ = ffi.offsetof("struct vfio_iommu_type1_dma_unmap", "size") + 8
_VBITMAP_SZ = ffi.sizeof("struct vfio_bitmap")
_FEATURE_HDR = ffi.sizeof("struct vfio_device_feature")
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


def _ffs(x: int) -> int:
    return (x & -x).bit_length() - 1


def _verify_bitmap_size(npages: int, size: int) -> None:
    if not npages or not size or size > DIRTY_BITMAP_SIZE_MAX or size < bytes_for(npages):
        raise KernelError(errno.EINVAL, f"type1: dirty bitmap of {size} bytes for {npages} pages")


def _user_words(addr: int, nbytes: int) -> np.ndarray:
    """The user's bitmap as u64 words (EFAULT when not mapped, like copy_to_user)."""
    if addr == 0 or addr % 8 or not MockKernel.user_mapped(addr, max(nbytes, 1)):
        raise KernelError(errno.EFAULT, f"type1: dirty bitmap at {addr:#x}+{nbytes} not writable")
    return np.frombuffer(ffi.buffer(ffi.cast("char *", addr), nbytes // 8 * 8), dtype="<u8")


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
        user = _user_words(int(ffi.cast("uintptr_t", r.bitmap.data)), bsize)
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
    user = _user_words(int(ffi.cast("uintptr_t", bm.data)), bsize) if victims else None
    for e in victims:
        if user is not None:
            _update_user_bitmap(user, iommu, e, iova, pgsize)
        unmapped += e.size
        iommu._remove(e)
    u.size = unmapped
    return 0


# ---------------------------------------------------------------------------------------------
# device DMA logging
# ---------------------------------------------------------------------------------------------


@dataclass
class DeviceLog:
    """A simulated device's DMA logger (the driver's log_ops and the device's tracker)."""

    #: Ranges the device can track at once (more are combined, as mlx5/pds drivers do).
    max_ranges: int = 4
    #: Page sizes the device tracks (bitmap of powers of two); START rounds up to one of them.
    pgsize_bitmap: int = 0x1000 | 0x200000
    active: bool = False
    page_size: int = 0
    #: Tracked ranges (start, end exclusive) after combining.
    ranges: list[tuple[int, int]] = field(default_factory=list)
    #: Dirty tracked pages (IOVA // page_size), cleared by REPORT.
    dirty: set[int] = field(default_factory=set)
    #: Every (iova, size) START asked for (for tests).
    requested: list[tuple[int, int]] = field(default_factory=list)

    def wrote(self, iova: int, size: int) -> None:
        if not self.active or size <= 0:
            return
        end = iova + size
        for a, b in self.ranges:
            lo, hi = max(a, iova), min(b, end)
            if lo < hi:
                self.dirty.update(range(lo // self.page_size, (hi - 1) // self.page_size + 1))


def enable_device_logging(sim: Any, *, max_ranges: int = 4, pgsize_bitmap: int = 0x1000 | 0x200000) -> DeviceLog:
    """Give simulated device ``sim`` a DMA logger (the driver gains log_ops)."""
    if max_ranges < 1 or pgsize_bitmap <= 0:
        raise ValueError("a device logger needs max_ranges >= 1 and at least one page size")
    log = DeviceLog(max_ranges=max_ranges, pgsize_bitmap=pgsize_bitmap)
    sim.dma_log = log
    return log


def device_dma_written(sim: Any, iova: int, size: int) -> None:
    """The simulated device wrote [iova, iova+size) (its DMA engine calls this)."""
    log = getattr(sim, "dma_log", None)
    if log is not None:
        log.wrote(iova, size)


def _combine(ranges: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    """vfio_combine_iova_ranges: merge neighbours across the smallest gaps until ``cap`` remain."""
    out = sorted(ranges)
    while len(out) > cap:
        gaps = [out[i + 1][0] - out[i][1] for i in range(len(out) - 1)]
        i = gaps.index(min(gaps))
        out[i:i + 2] = [(out[i][0], out[i + 1][1])]
    return out


def _check_feature(flags: int, argsz: int, supported: int, minsz: int) -> bool:
    """vfio_check_feature: False for a PROBE that passed, True to go on, KernelError otherwise."""
    g_s = flags & (ioctls.VFIO_DEVICE_FEATURE_GET | ioctls.VFIO_DEVICE_FEATURE_SET)
    if g_s & ~supported:
        raise KernelError(errno.EINVAL, "vfio: feature does not support that operation")
    if flags & ioctls.VFIO_DEVICE_FEATURE_PROBE:
        return False
    if not g_s:
        raise KernelError(errno.EINVAL, "vfio: feature needs GET or SET")
    if argsz < minsz:
        raise KernelError(errno.EINVAL, "vfio: feature payload shorter than its struct")
    return True


DMA_LOGGING_FEATURES = (ioctls.VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                        ioctls.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
                        ioctls.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT)


def device_feature(sim: Any, arg: Any) -> int:
    """VFIO_DEVICE_FEATURE for the DMA_LOGGING_* features (header already validated)."""
    f = ffi.cast("struct vfio_device_feature *", arg)
    flags = int(f.flags)
    feat = flags & ioctls.VFIO_DEVICE_FEATURE_MASK
    payload = int(f.argsz) - _FEATURE_HDR
    log: DeviceLog | None = getattr(sim, "dma_log", None)
    if log is None:
        raise KernelError(errno.ENOTTY, f"vfio-pci {getattr(sim, 'name', '?')}: no DMA logging")
    S, G = ioctls.VFIO_DEVICE_FEATURE_SET, ioctls.VFIO_DEVICE_FEATURE_GET
    if feat == ioctls.VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
        ctl_sz = ffi.sizeof("struct vfio_device_feature_dma_logging_control")
        if not _check_feature(flags, payload, S, ctl_sz):
            return 0
        ctl = ffi.cast("struct vfio_device_feature_dma_logging_control *", f.data)
        n, psize = int(ctl.num_ranges), int(ctl.page_size)
        if not n:
            raise KernelError(errno.EINVAL, "vfio: DMA_LOGGING_START without ranges")
        if n > LOG_MAX_RANGES:
            raise KernelError(errno.E2BIG, f"vfio: {n} logging ranges > {LOG_MAX_RANGES}")
        if psize <= 0:
            raise KernelError(errno.EINVAL, "vfio: DMA logging page_size 0")
        rsz = ffi.sizeof("struct vfio_device_feature_dma_logging_range")
        addr = int(ctl.ranges)
        if not MockKernel.user_mapped(addr, n * rsz):
            raise KernelError(errno.EFAULT, "vfio: DMA logging ranges not readable")
        rr = ffi.cast("struct vfio_device_feature_dma_logging_range *", addr)
        ranges: list[tuple[int, int]] = []
        for i in range(n):
            iova, length = int(rr[i].iova), int(rr[i].length)
            if iova % psize or length % psize:
                raise KernelError(errno.EINVAL, f"vfio: logging range {i} not aligned to {psize:#x}")
            if iova + length > U64:
                raise KernelError(errno.EOVERFLOW, f"vfio: logging range {i} overflows")
            last = iova + length - 1
            if any(a <= last and iova <= b - 1 for a, b in ranges):
                raise KernelError(errno.EINVAL, f"vfio: logging range {i} overlaps another")
            ranges.append((iova, iova + length))
        if log.active:
            raise KernelError(errno.EINVAL, "vfio-pci: DMA logging already started")
        size = psize
        while not size & log.pgsize_bitmap:
            size <<= 1
            if size > log.pgsize_bitmap:
                raise KernelError(errno.EINVAL, f"vfio-pci: page size {psize:#x} above what the device tracks")
        log.page_size = size
        log.requested = [(a, b - a) for a, b in ranges]
        log.ranges = _combine(ranges, log.max_ranges)
        log.dirty = set()
        log.active = True
        ctl.page_size = size
        return 0
    if feat == ioctls.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
        if not _check_feature(flags, payload, S, 0):
            return 0
        log.active = False
        log.ranges, log.dirty = [], set()
        return 0
    # REPORT
    rep_sz = ffi.sizeof("struct vfio_device_feature_dma_logging_report")
    if not _check_feature(flags, payload, G, rep_sz):
        return 0
    rep = ffi.cast("struct vfio_device_feature_dma_logging_report *", f.data)
    iova, length, psize = int(rep.iova), int(rep.length), int(rep.page_size)
    if psize < 4096 or psize & (psize - 1):
        raise KernelError(errno.EINVAL, f"vfio: report page_size {psize:#x}")
    if iova + length > U64:
        raise KernelError(errno.EOVERFLOW, "vfio: report range overflows")
    nbits = -(-length // psize) if length else 0
    if not nbits:
        return 0
    user = _user_words(int(rep.bitmap), bytes_for(nbits))
    if not log.active:
        raise KernelError(errno.EINVAL, "vfio-pci: DMA logging report while not logging")
    end = iova + length
    done = set()
    for p in log.dirty:
        lo, hi = p * log.page_size, (p + 1) * log.page_size
        lo, hi = max(lo, iova), min(hi, end)
        if lo < hi:
            set_bits(user, (lo - iova) // psize, (hi - 1 - iova) // psize - (lo - iova) // psize + 1)
            done.add(p)
    log.dirty -= done
    return 0


__all__ = ["DirtyConfig", "DeviceLog", "config", "set_semantics", "mark", "type1_dirty_pages",
           "type1_unmap_with_bitmap", "enable_device_logging", "device_dma_written",
           "device_feature", "DMA_LOGGING_FEATURES", "LOG_MAX_RANGES", "DIRTY_BITMAP_SIZE_MAX"]
