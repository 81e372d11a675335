"""Dirty-page tracking requests: type1's VFIO_IOMMU_DIRTY_PAGES, UNMAP_DMA with a dirty bitmap,
and the device feature VFIO_DEVICE_FEATURE_DMA_LOGGING_START/STOP/REPORT.

These are thin, checked wrappers of single ioctls; :mod:`pyvfio.services.dirty` builds the
windowed reports on top.

* :func:`dirty_pages` returns the tracker requests of a container's IOMMU, dispatching by IOMMU
  type: ``VFIO_IOMMU_DIRTY_PAGES`` shares request number 0x3b75 (``_IO(';', 117)``) with
  ``VFIO_IOMMU_SPAPR_REGISTER_MEMORY``, so it is only ever issued on a type1 container; an
  sPAPR container gets :class:`~pyvfio.errors.UnsupportedError` before any syscall.
* :class:`Type1DirtyPages`: ``start()``, ``stop()``, ``get_bitmap()`` and ``unmap_dma()`` (UNMAP_DMA
  with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP).
* :class:`DmaLogging`: the device-side tracker of a :class:`~pyvfio.vfio.device.Device`:
  ``probe()`` (VFIO_DEVICE_FEATURE_PROBE), ``start(ranges, page_size)``, ``report()``, ``stop()``.

Bitmaps are in the kernel's format (little-endian u64 words, bit ``i`` = page ``i`` from the
requested IOVA); pass a :class:`~pyvfio.core.bitmap.DirtyBitmap`, whose buffer the kernel
writes in place.

Semantics: the type1 driver without a vendor migration driver cannot see device writes and
reports *every* page of every mapping dirty at each report; only a device with DMA logging
(mlx5, pds, ... variant drivers) reports the pages it wrote. Plain vfio-pci (e.g. QEMU's edu)
answers ENOTTY to DMA_LOGGING_*: :meth:`DmaLogging.probe` says unsupported and ``start`` raises
UnsupportedError with a hint.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.core.bitmap import DirtyBitmap
    >>> from pyvfio.services.dma import DmaBuffer
    >>> from pyvfio.vfio import open_device
    >>> with open_device("0000:00:03.0", backend=MockBackend()) as d, DmaBuffer(1 << 16) as buf:
    ...     d.iommu.map_dma(buf.addr, 0x100000, 1 << 16)  # raw: no DmaMapping handle
    ...     dp = dirty_pages(d.iommu)
    ...     dp.start()
    ...     bm = DirtyBitmap.zeros(16, base=0x100000)
    ...     dp.get_bitmap(0x100000, 1 << 16, bm)
    ...     (bm.count(), dp.unmap_dma(0x100000, 1 << 16, bm))
    (0, 65536)
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, Sequence

from ..core.fd import Closeable
from .. import ioctls as I
from ..errors import (AlignmentError, ArgumentError, OverlapError, PyvfioError, RangeError,
                      StateError, UnsupportedError, register_hint)
from ..uapi import ffi
from .container import IommuBase
from .type1 import Type1Iommu

__all__ = ["Type1DirtyPages", "DmaLogging", "LoggingSupport", "dirty_pages", "LOG_MAX_RANGES",
           "BitmapLike"]

U64_MAX = (1 << 64) - 1
#: vfio_main.c accepts at most PAGE_SIZE / sizeof(range) logging ranges (E2BIG beyond).
LOG_MAX_RANGES = 4096 // 16

_HDR = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "data")
_GET = ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get")
_UNMAP = ffi.sizeof("struct vfio_iommu_type1_dma_unmap")
_VBM = ffi.sizeof("struct vfio_bitmap")
_FEAT = ffi.sizeof("struct vfio_device_feature")
_CTL = ffi.sizeof("struct vfio_device_feature_dma_logging_control")
_RNG = ffi.sizeof("struct vfio_device_feature_dma_logging_range")
_REP = ffi.sizeof("struct vfio_device_feature_dma_logging_report")

# One request object per mode: errors and hints name the mode (VFIO_IOMMU_DIRTY_PAGES(START)).
_DIRTY_START = I.VFIO_IOMMU_DIRTY_PAGES.variant("START")
_DIRTY_STOP = I.VFIO_IOMMU_DIRTY_PAGES.variant("STOP")
_DIRTY_GET_BITMAP = I.VFIO_IOMMU_DIRTY_PAGES.variant("GET_BITMAP")
_UNMAP_GET_DIRTY_BITMAP = I.VFIO_IOMMU_UNMAP_DMA.variant("GET_DIRTY_BITMAP")

#: Something with ``address`` (int) and ``nbytes`` (int): a DirtyBitmap, or (address, nbytes).
BitmapLike = Any


def _span(bitmap: BitmapLike) -> tuple[int, int]:
    if isinstance(bitmap, tuple):
        addr, nbytes = bitmap
        return int(addr), int(nbytes)
    return int(bitmap.address), int(bitmap.nbytes)


def dirty_pages(iommu: IommuBase) -> "Type1DirtyPages":
    """The dirty-page requests of ``iommu`` (what ``Container.set_iommu()`` returned).

    Dispatch by IOMMU type: type1 (v2) gets :class:`Type1DirtyPages`. Any other IOMMU raises
    UnsupportedError without a syscall: on sPAPR the number 0x3b75 is
    VFIO_IOMMU_SPAPR_REGISTER_MEMORY, so sending DIRTY_PAGES there would register memory.
    Something that is not a VFIO container's IOMMU (an iommufd IOAS, a Container) raises
    ArgumentError saying what to pass instead.
    """
    if isinstance(iommu, Type1Iommu):
        return Type1DirtyPages(iommu)
    if not isinstance(iommu, IommuBase):
        what = type(iommu).__name__
        iommufd = hasattr(iommu, "iommufd")  # an Ioas or HwPagetable
        raise ArgumentError(
            f"dirty tracking takes the type1 IOMMU of a VFIO container (what Container.set_iommu() "
            f"or open_device(...).iommu gives), not {what}"
            + ("; an iommufd IOAS tracks dirty pages through a HWPT: "
               "IommuFd.hwpt_alloc(dev_id, ioas, dirty_tracking=True), then "
               "HwPagetable.set_dirty_tracking(True) and HwPagetable.get_dirty_bitmap(iova, length)"
               if iommufd else ""))
    raise UnsupportedError(
        errno.EOPNOTSUPP, f"the container's IOMMU (type {getattr(iommu, 'type', '?')}) has no "
        "VFIO_IOMMU_DIRTY_PAGES", op=I.VFIO_IOMMU_DIRTY_PAGES.name,
        path=getattr(getattr(iommu, "container", None), "path", None),
        hint="request 0x3b75 is VFIO_IOMMU_SPAPR_REGISTER_MEMORY on sPAPR containers; dirty "
             "tracking exists for type1 (and iommufd HWPTs)")


class Type1DirtyPages:
    """VFIO_IOMMU_DIRTY_PAGES and UNMAP_DMA-with-bitmap of one type1 container.

    Build it with :func:`dirty_pages`. ``tracking`` mirrors what pyvfio asked of this container
    (the kernel keeps one tracking state per container, so every object over the same IOMMU
    sees the same state).

    Threads: every request packs its own argument, so ``get_bitmap`` and ``unmap_dma`` may run
    concurrently (the kernel serialises the container); ``start``/``stop`` flip the
    container-wide tracking state: one thread.
    """

    def __init__(self, iommu: Type1Iommu) -> None:
        if iommu.closed:
            raise StateError("the IOMMU is closed")
        self.iommu = iommu

    @property
    def tracking(self) -> bool:
        return self.iommu.dirty_tracking

    @tracking.setter
    def tracking(self, on: bool) -> None:
        self.iommu.dirty_tracking = on

    def _flags_only(self, flags: int, request: I.Request) -> None:
        a = ffi.new("struct vfio_iommu_type1_dirty_bitmap *")
        a.argsz = _HDR
        a.flags = flags
        self.iommu._ioctl(request, a)

    def start(self) -> None:
        """VFIO_IOMMU_DIRTY_PAGES with FLAG_START: allocate a bitmap per mapping (and per later
        mapping) and begin tracking. Idempotent in the kernel.

        Errors: EACCES on a type1 (v1) container; EINVAL when a mapping has more than INT_MAX
        pages; ENOMEM.
        """
        self._flags_only(I.VFIO_IOMMU_DIRTY_PAGES_FLAG_START, _DIRTY_START)
        self.tracking = True

    def stop(self) -> None:
        """VFIO_IOMMU_DIRTY_PAGES with FLAG_STOP: free the bitmaps. Idempotent."""
        self._flags_only(I.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, _DIRTY_STOP)
        self.tracking = False

    def get_bitmap(self, iova: int, size: int, bitmap: BitmapLike, pgsize: int = 4096) -> None:
        """VFIO_IOMMU_DIRTY_PAGES with FLAG_GET_BITMAP for [iova, iova+size) into ``bitmap``
        (a DirtyBitmap or ``(address, nbytes)``), bit 0 = the page at ``iova``; reading clears.

        The kernel writes the words each mapping covers and leaves the rest (holes) as they
        were: pass a zeroed bitmap. No pre-checks here (see DirtyTracker for those).

        Errors (EINVAL): tracking not started, pgsize not the smallest IOMMU page, iova/size
        unaligned or zero, bitmap smaller than ALIGN(pages, 64)/8 or above
        max_dirty_bitmap_size, the range bisects a mapping. EFAULT: bitmap not writable.
        EACCES: type1 v1.
        """
        addr, nbytes = _span(bitmap)
        raw = ffi.new("char[]", _HDR + _GET)  # a fresh argument per call (no shared struct)
        a = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", raw)
        g = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", a.data)
        a.argsz = _HDR + _GET
        a.flags = I.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
        g.iova = iova
        g.size = size
        g.bitmap.pgsize = pgsize
        g.bitmap.size = nbytes
        g.bitmap.data = ffi.cast("__u64 *", addr)
        self.iommu._ioctl(_DIRTY_GET_BITMAP, a)

    def unmap_dma(self, iova: int, size: int, bitmap: BitmapLike, pgsize: int = 4096) -> int:
        """VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: unmap every mapping in
        [iova, iova+size) and write their last dirty bits into ``bitmap`` (bit 0 = ``iova``).
        Returns the bytes unmapped. Raw: pyvfio's DmaMapping handles are not updated (use
        DirtyTracker.unmap_and_report for that).

        Errors (EINVAL): tracking off, pgsize not the smallest IOMMU page, unaligned/zero size,
        bitmap too small or too large, a bisected mapping (v2). EFAULT: bitmap not writable.
        """
        addr, nbytes = _span(bitmap)
        uraw = ffi.new("char[]", _UNMAP + _VBM)
        u = ffi.cast("struct vfio_iommu_type1_dma_unmap *", uraw)
        b = ffi.cast("struct vfio_bitmap *", u.data)
        u.argsz = _UNMAP + _VBM
        u.flags = I.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
        u.iova = iova
        u.size = size
        b.pgsize = pgsize
        b.size = nbytes
        b.data = ffi.cast("__u64 *", addr)
        self.iommu._ioctl(_UNMAP_GET_DIRTY_BITMAP, u)
        return int(u.size)

    def __repr__(self) -> str:
        return f"<Type1DirtyPages {'tracking' if self.tracking else 'idle'} {self.iommu!r}>"


# ---------------------------------------------------------------------------------------------
# device DMA logging
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggingSupport:
    """What VFIO_DEVICE_FEATURE_PROBE said about DMA_LOGGING_START (SET), STOP (SET) and
    REPORT (GET)."""

    start: bool
    stop: bool
    report: bool

    @property
    def supported(self) -> bool:
        return self.start and self.stop and self.report


_NO_LOGGING_HINT = ("this device's VFIO driver has no DMA logging (vfio-pci itself never has it; "
                    "variant drivers such as mlx5-vfio-pci or pds-vfio-pci do): track dirty "
                    "pages with the IOMMU instead (VFIO_IOMMU_DIRTY_PAGES / DirtyTracker)")


def check_logging_ranges(ranges: Sequence[tuple[int, int]], page_size: int) -> list[tuple[int, int]]:
    """Validate DMA logging ``(iova, length)`` ranges the way vfio_main.c will, before the
    syscall: 1..LOG_MAX_RANGES ranges, page_size a power of two >= 4 KiB, each range non-empty,
    aligned to page_size, not wrapping, not overlapping another. Returns them sorted."""
    if page_size < 4096 or page_size & (page_size - 1):
        raise AlignmentError(f"page_size {page_size:#x} must be a power of two >= 4 KiB")
    rs = [(int(a), int(n)) for a, n in ranges]
    if not rs:
        raise ArgumentError("DMA logging needs at least one range")
    if len(rs) > LOG_MAX_RANGES:
        raise RangeError(f"{len(rs)} ranges: the kernel accepts at most {LOG_MAX_RANGES} (E2BIG); "
                         "merge neighbouring ranges")
    for a, n in rs:
        if n <= 0 or a < 0:
            raise RangeError(f"range {a:#x}+{n:#x} is empty or negative")
        if a % page_size or n % page_size:
            raise AlignmentError(f"range {a:#x}+{n:#x} is not aligned to page_size {page_size:#x}")
        if a + n - 1 > U64_MAX:
            raise RangeError(f"range {a:#x}+{n:#x} wraps around")
    rs.sort()
    for (a, n), (b, _m) in zip(rs, rs[1:]):
        if a + n > b:
            raise OverlapError(f"ranges {a:#x}+{n:#x} and {b:#x} overlap")
    return rs


class DmaLogging(Closeable):
    """The device's own DMA logger (VFIO_DEVICE_FEATURE_DMA_LOGGING_*), for ``device`` (a
    :class:`~pyvfio.vfio.device.Device`).

    ``page_size`` is what START settled on (the driver may round the requested size up);
    ``ranges`` what was asked. ``close()`` stops logging if this object started it.

    Threads: ``report`` may run concurrently with itself; ``start``/``stop``/``close`` change
    :attr:`active` unlocked: one thread.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self.active = False
        self.page_size = 0
        self.ranges: list[tuple[int, int]] = []

    def _feature(self, feature: int, flags: int, payload: Any, size: int, name: str) -> None:
        raw = ffi.new("char[]", _FEAT + size)
        f = ffi.cast("struct vfio_device_feature *", raw)
        f.argsz = _FEAT + size
        f.flags = feature | flags
        if size:
            ffi.memmove(f.data, payload, size)
        request = I.VFIO_DEVICE_FEATURE.variant(name)
        try:  # the device's fd: through the seam directly
            self.device.backend.ioctl(self.device.fileno(), request, f)
        except PyvfioError as e:
            if e.errno == errno.ENOTTY:
                raise UnsupportedError(e.errno, op=request.name, path=e.path,
                                       hint=_NO_LOGGING_HINT) from None
            raise
        if size:
            ffi.memmove(payload, f.data, size)

    def _probe_one(self, feature: int, flag: int, name: str) -> bool:
        try:
            self._feature(feature, I.VFIO_DEVICE_FEATURE_PROBE | flag, ffi.NULL, 0, name)
        except UnsupportedError:
            return False
        except PyvfioError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        return True

    def probe(self) -> LoggingSupport:
        """VFIO_DEVICE_FEATURE with PROBE for each logging feature (SET for START/STOP, GET for
        REPORT). ENOTTY (no logger: plain vfio-pci) and EINVAL read as unsupported."""
        return LoggingSupport(
            self._probe_one(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, I.VFIO_DEVICE_FEATURE_SET, "PROBE DMA_LOGGING_START"),
            self._probe_one(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, I.VFIO_DEVICE_FEATURE_SET, "PROBE DMA_LOGGING_STOP"),
            self._probe_one(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, I.VFIO_DEVICE_FEATURE_GET, "PROBE DMA_LOGGING_REPORT"))

    def start(self, ranges: Sequence[tuple[int, int]], page_size: int = 4096) -> int:
        """VFIO_DEVICE_FEATURE_DMA_LOGGING_START (SET) over ``(iova, length)`` ranges; returns the
        page size the device tracks at (maybe larger than asked).

        Checked first (ArgumentError subclasses): see :func:`check_logging_ranges`. A device
        that tracks fewer ranges than given combines them (its driver closes the smallest gaps),
        so pages in such gaps may be reported too.

        Errors: UnsupportedError (ENOTTY: no DMA logging, with a hint); EINVAL (already
        started, unsupported page size); E2BIG; EOVERFLOW.
        """
        rs = check_logging_ranges(ranges, page_size)
        arr = ffi.new("struct vfio_device_feature_dma_logging_range[]", len(rs))
        for i, (a, n) in enumerate(rs):
            arr[i].iova = a
            arr[i].length = n
        ctl = ffi.new("struct vfio_device_feature_dma_logging_control *")
        ctl.page_size = page_size
        ctl.num_ranges = len(rs)
        ctl.ranges = int(ffi.cast("uintptr_t", arr))
        self._feature(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, I.VFIO_DEVICE_FEATURE_SET, ctl, _CTL,
                      "DMA_LOGGING_START")
        self.active = True
        self.page_size = int(ctl.page_size)
        self.ranges = rs
        return self.page_size

    def stop(self) -> None:
        """VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP (SET, no payload)."""
        self._feature(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, I.VFIO_DEVICE_FEATURE_SET, ffi.NULL, 0,
                      "DMA_LOGGING_STOP")
        self.active = False

    def report(self, iova: int, length: int, bitmap: BitmapLike, page_size: int | None = None) -> None:
        """VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT (GET): OR the bits of the pages the device wrote
        in [iova, iova+length) into ``bitmap`` (bit 0 = ``iova``, ``page_size`` granules,
        default the logging page size) and clear them in the device's log.

        Errors: EINVAL (not logging, page_size < 4 KiB or not a power of two), EOVERFLOW.
        """
        ps = page_size or self.page_size or 4096
        if ps < 4096 or ps & (ps - 1):
            raise AlignmentError(f"page_size {ps:#x} must be a power of two >= 4 KiB")
        if length <= 0 or iova < 0 or iova + length - 1 > U64_MAX:
            raise RangeError(f"report range {iova:#x}+{length:#x} is empty or wraps")
        addr, nbytes = _span(bitmap)
        need = (-(-length // ps) + 63) // 64 * 8
        if nbytes < need:
            raise RangeError(f"bitmap of {nbytes} bytes; {length:#x} bytes at {ps:#x} pages need {need}")
        rep = ffi.new("struct vfio_device_feature_dma_logging_report *")
        rep.iova = iova
        rep.length = length
        rep.page_size = ps
        rep.bitmap = addr
        self._feature(I.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, I.VFIO_DEVICE_FEATURE_GET, rep, _REP,
                      "DMA_LOGGING_REPORT")

    def close(self) -> None:
        """Stop logging if this object started it (idempotent)."""
        if self.active and not self.device.closed:
            self.stop()
        self.active = False



register_hint(_DIRTY_START.name, errno.EACCES,
              "dirty page tracking needs a VFIO_TYPE1v2_IOMMU container (this one is type1 v1)")
register_hint(_DIRTY_GET_BITMAP.name, errno.EACCES,
              "dirty page tracking needs a VFIO_TYPE1v2_IOMMU container (this one is type1 v1)")
register_hint(_DIRTY_GET_BITMAP.name, errno.EINVAL,
              "tracking not started, pgsize not the smallest IOMMU page (MIGRATION cap), "
              "range unaligned/empty or bisecting a mapping, or the bitmap is smaller than "
              "ALIGN(pages, 64)/8 or larger than max_dirty_bitmap_size")
register_hint(_UNMAP_GET_DIRTY_BITMAP.name, errno.EINVAL,
              "dirty tracking not started, pgsize not the smallest IOMMU page, the bitmap too "
              "small/large for the range, or the range bisects a mapping")
