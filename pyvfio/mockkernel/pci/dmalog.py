"""Mock device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT).

Follows drivers/vfio/vfio_main.c with a log_ops driver modelled on mlx5/pds. Off for every simulated device unless
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


from ... import ioctls
from ...uapi import ffi
from ..core import KernelError
from ..bitmap import user_words, bytes_for, set_bits
from ..memory import user_mapped

U64 = (1 << 64) - 1
#: DIRTY_BITMAP_PAGES_MAX of the kernel (INT_MAX bits) and DIRTY_BITMAP_SIZE_MAX (256 MiB).
#: vfio_main.c: ranges must fit into one kernel page.
LOG_MAX_RANGES = 4096 // 16

_FEATURE_HDR = ffi.sizeof("struct vfio_device_feature")


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
        if not user_mapped(addr, n * rsz):
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
    user = user_words(int(rep.bitmap), bytes_for(nbits))
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


__all__ = ["DeviceLog", "enable_device_logging", "device_dma_written", "device_feature",
           "DMA_LOGGING_FEATURES", "LOG_MAX_RANGES"]
