"""Dirty-page tracking for a VFIO container: windowed type1 reports and device DMA logs.

:class:`DirtyTracker` drives VFIO_IOMMU_DIRTY_PAGES for a type1 IOMMU:

* ``start()`` / ``stop()`` (context manager: stops on exit);
* ``report(iova, size)`` — one :class:`~pyvfio.core.bitmap.DirtyBitmap` for the range,
  filled window by window. A GET_BITMAP call is bounded by the MIGRATION capability's
  ``max_dirty_bitmap_size`` (256 MiB of bitmap, 8 TiB of IOVA at 4 KiB) and, by the kernel's
  rule, must not cut a mapping in two; so windows end either in a hole or at a mapping boundary,
  preferably 64 pages apart from the range start. Such windows are written by the kernel
  *straight into their slice of the result* (zero copy); a window whose start is not on a word
  boundary goes through a scratch bitmap and is OR-shifted in (counted in ``stats``);
* ``report_mappings()`` — one bitmap per mapping (one GET_BITMAP each);
* ``unmap_and_report(mapping)`` — UNMAP_DMA with GET_DIRTY_BITMAP: the mapping's last bitmap as
  it goes away (the pyvfio handle is released);
* ``watch(seconds, interval)`` — dirty pages per second, report after report.

:class:`DeviceDirtyLog` does the same with the device feature DMA_LOGGING_* (device-side
tracking of chosen IOVA ranges), for devices whose driver has it.

What the bits mean depends on who tracks: the real type1 without a vendor driver cannot see
device writes and reports every page of every mapping dirty at each report; the mock kernel's
IOMMU (and a device with DMA logging) reports exactly the pages written since the last report.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.services.dma import DmaBuffer
    >>> from pyvfio.vfio import open_device
    >>> from pyvfio.vfio.edu import EduDevice
    >>> with open_device("0000:00:03.0", backend=MockBackend()) as d, DmaBuffer(1 << 20) as buf:
    ...     edu = EduDevice(d.device); edu.enable_bus_master()
    ...     m = d.iommu.map(buf, 0x100000)
    ...     with DirtyTracker(d.iommu) as t:
    ...         _ = edu.from_device(0x100000 + 3 * 4096, 100)
    ...         t.report(0x100000, 1 << 20).pages().tolist()
    [3]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import AlignmentError, ArgumentError, RangeError, StateError, UnsupportedError
from ..vfio.container import IommuBase
from ..vfio.dirty import DmaLogging, LoggingSupport, Type1DirtyPages, dirty_pages
from ..vfio.type1 import DmaMapping, ShortUnmapError, Type1Iommu
from ..core.bitmap import DirtyBitmap, words_for
from ..util.hexrepr import hex_repr
from ..core.mapping import as_mapping
from ..uapi.args import U64_MAX, as_int

__all__ = ["DirtyTracker", "DeviceDirtyLog", "Window", "TrackerStats", "WatchSample"]

_U = np.uint64


@hex_repr('iova')
@dataclass(frozen=True)
class Window:
    """One GET_BITMAP call of a report: ``iova`` and ``npages`` (pages of the tracker's size),
    ``first_page`` its offset in the result, ``direct`` when the kernel writes in place."""

    iova: int
    npages: int
    first_page: int
    direct: bool


@dataclass
class TrackerStats:
    """Counters of a tracker: reports, kernel calls (GET_BITMAP, UNMAP with bitmap), windows
    that needed a scratch copy, and the pages the reports covered (dirty or clean; a report's
    dirty count is its bitmap's ``count()``)."""

    reports: int = 0
    calls: int = 0
    copied_windows: int = 0
    pages_reported: int = 0


@dataclass(frozen=True)
class WatchSample:
    """One report of :meth:`DirtyTracker.watch`: time since start, dirty pages in this report,
    the rate since the previous one, and the total so far."""

    t: float
    dirty: int
    pages_per_s: float
    total: int


def or_shifted(dst: DirtyBitmap, first_page: int, src: DirtyBitmap) -> None:
    """``dst[first_page : first_page + len(src)] |= src`` for any ``first_page`` (vectorised word
    shifts; used for windows that cannot be written in place)."""
    n = src.npages
    if first_page < 0 or first_page + n > dst.npages:
        raise RangeError(f"pages {first_page}+{n} outside 0..{dst.npages}")
    if n == 0:
        return
    w0, s = divmod(first_page, 64)
    sw = src._clean_words()
    if s == 0:
        np.bitwise_or(dst.words[w0:w0 + sw.size], sw, out=dst.words[w0:w0 + sw.size])
        return
    out_n = words_for(n + s)
    d = dst.words[w0:w0 + out_n]
    d[:sw.size] |= sw << _U(s)
    d[1:] |= sw[:out_n - 1] >> _U(64 - s)


class DirtyTracker:
    """Type1 dirty-page tracking of ``iommu`` (what ``Container.set_iommu()`` returned: a
    Type1Iommu), reports windowed by the kernel's bitmap limit.

    ``max_bitmap_bytes`` lowers the per-call bitmap size below the MIGRATION capability's
    ``max_dirty_bitmap_size`` (tests and benchmarks use it to force several windows).
    Raises UnsupportedError when the IOMMU is not type1 or reports no MIGRATION capability,
    ArgumentError for something that is no VFIO IOMMU (an iommufd IOAS: use its HWPT's dirty
    API). ``report`` before ``start`` raises StateError (the kernel's EINVAL).
    """

    def __init__(self, iommu: IommuBase, *, max_bitmap_bytes: int | None = None) -> None:
        self.ops: Type1DirtyPages = dirty_pages(iommu)  # dispatch by IOMMU type
        self.iommu: Type1Iommu = self.ops.iommu
        mig = self.iommu.info().migration
        if mig is None:
            raise UnsupportedError(95, "the type1 IOMMU reports no MIGRATION capability",
                                   op="VFIO_IOMMU_GET_INFO", path=self.iommu.container.path,
                                   hint="dirty page tracking needs Linux >= 5.8 (vfio_iommu_type1)")
        pgs = mig.pgsize_bitmap
        self.page_size = (pgs & -pgs) if pgs else 4096
        limit = int(mig.max_dirty_bitmap_size)
        if max_bitmap_bytes is not None:
            if max_bitmap_bytes < 8:
                raise ArgumentError(f"max_bitmap_bytes {max_bitmap_bytes} < 8 (one word)")
            limit = min(limit, int(max_bitmap_bytes))
        self.max_bitmap_bytes = limit
        #: Pages one GET_BITMAP covers at most (a multiple of 64).
        self.window_pages = limit * 8 // 64 * 64
        self.stats = TrackerStats()

    @property
    def aperture(self) -> tuple[int, int]:
        """The IOVAs a report may cover, inclusive: from the lowest start to the highest end of
        the IOMMU's reported IOVA ranges (the whole 64-bit space when it reports none)."""
        ranges = self.iommu.info().iova_ranges
        if not ranges:
            return 0, U64_MAX
        return min(r.start for r in ranges), max(r.end for r in ranges)

    # -- state --------------------------------------------------------------------------------
    @property
    def tracking(self) -> bool:
        return self.ops.tracking

    def start(self) -> "DirtyTracker":
        """VFIO_IOMMU_DIRTY_PAGES(START). Returns self."""
        self.ops.start()
        return self

    def stop(self) -> None:
        """VFIO_IOMMU_DIRTY_PAGES(STOP)."""
        self.ops.stop()

    def close(self) -> None:
        """Stop tracking if on and the container is still open (idempotent)."""
        if self.ops.tracking and not self.iommu.closed:
            self.ops.stop()
        self.ops.tracking = False

    def __enter__(self) -> "DirtyTracker":
        if not self.tracking:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning -----------------------------------------------------------------------------
    def _live(self) -> list[DmaMapping]:
        return sorted(self.iommu.mappings.values(), key=lambda m: m.iova)

    def _check_range(self, iova: int, size: int) -> tuple[int, int]:
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        pg = self.page_size
        if iova < 0 or iova + size > U64_MAX + 1:
            raise RangeError(f"range {iova:#x}+{size:#x} is negative or wraps around")
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        lo, hi = self.aperture
        if iova < lo or iova + size - 1 > hi:
            raise RangeError(f"range {iova:#x}+{size:#x} is outside the IOMMU's IOVA aperture "
                             f"{lo:#x}-{hi:#x} (its reported IOVA ranges): nothing there can be "
                             "mapped, so nothing there can be dirty")
        if iova % pg or size % pg:
            raise AlignmentError(f"range {iova:#x}+{size:#x} is not aligned to the tracking page size {pg:#x}")
        for m in self._live():
            for edge in (iova, iova + size):
                if m.iova < edge < m.iova + m.size:
                    raise RangeError(f"range {iova:#x}+{size:#x} cuts the mapping {m.iova:#x}+{m.size:#x} "
                                     "in two: the kernel answers EINVAL; widen it to whole mappings")
        return iova, size

    def plan(self, iova: int, size: int) -> list[Window]:
        """The GET_BITMAP windows of a report over [iova, iova+size) (no syscall).

        Each window holds at most ``window_pages`` pages and ends in a hole or at a mapping
        boundary (never inside a pyvfio mapping); a boundary in a hole is put on a multiple of 64
        pages from ``iova`` when the hole allows, so the kernel writes into the result directly.
        RangeError when one mapping alone is larger than a window.
        """
        iova, size = self._check_range(iova, size)
        pg, wp = self.page_size, self.window_pages
        end = iova + size
        maps = [m for m in self._live() if m.iova < end and m.iova + m.size > iova]
        out: list[Window] = []
        cur = iova
        k = 0  # index of the first mapping ending after cur
        while cur < end:
            while k < len(maps) and maps[k].iova + maps[k].size <= cur:
                k += 1
            limit = cur + wp * pg
            if limit >= end:
                b = end
            else:
                b = limit
                j = k
                while j < len(maps) and maps[j].iova + maps[j].size <= b:
                    j += 1
                if j < len(maps) and maps[j].iova < b:  # b falls inside maps[j]
                    m = maps[j]
                    hole = max(cur, maps[j - 1].iova + maps[j - 1].size if j > 0 else cur)
                    aligned = iova + ((m.iova - iova) // pg // 64) * 64 * pg
                    b = aligned if aligned > cur and aligned >= hole else m.iova
                    if b <= cur:
                        raise RangeError(f"the mapping {m.iova:#x}+{m.size:#x} needs "
                                         f"{m.size // pg} bitmap bits, more than one window "
                                         f"({wp} pages, {self.max_bitmap_bytes} bytes)")
            first = (cur - iova) // pg
            out.append(Window(cur, (b - cur) // pg, first, first % 64 == 0))
            cur = b
        return out

    # -- reports ------------------------------------------------------------------------------
    def report(self, iova: int | None = None, size: int | None = None, *,
               out: DirtyBitmap | None = None) -> DirtyBitmap:
        """The dirty pages of [iova, iova+size) as one DirtyBitmap (base ``iova``), reading and
        clearing the kernel's bits window by window (see :meth:`plan`).

        Without a range: from the first to the end of the last pyvfio mapping. ``out`` (same
        page count and page size) is reused instead of allocating. Holes report clean.

        Errors: StateError (with a hint) when tracking is not started, and ArgumentError
        subclasses for unaligned ranges or ranges cutting a mapping, before any syscall (the
        kernel would answer EINVAL); the kernel's EINVAL (a non-pyvfio mapping cut), EACCES
        (type1 v1).
        """
        self._check_tracking("report")
        if iova is None or size is None:
            live = self._live()
            if not live:
                raise StateError("no pyvfio mappings to report on; pass iova and size")
            iova = live[0].iova
            size = live[-1].iova + live[-1].size - iova
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        windows = self.plan(iova, size)
        npages = size // self.page_size
        if out is None:
            bm = DirtyBitmap.zeros(npages, page_size=self.page_size, base=iova)
        else:
            if out.npages != npages or out.page_size != self.page_size:
                raise ArgumentError(f"out has {out.npages} pages of {out.page_size:#x}, the range needs "
                                    f"{npages} of {self.page_size:#x}")
            out.clear()
            out.base = iova
            bm = out
        for w in windows:
            if w.direct:
                self.ops.get_bitmap(w.iova, w.npages * self.page_size, bm.window(w.first_page, w.npages),
                                    self.page_size)
            else:
                tmp = DirtyBitmap.zeros(w.npages, page_size=self.page_size, base=w.iova)
                self.ops.get_bitmap(w.iova, w.npages * self.page_size, tmp, self.page_size)
                or_shifted(bm, w.first_page, tmp)
                self.stats.copied_windows += 1
            self.stats.calls += 1
        self.stats.reports += 1
        self.stats.pages_reported += npages
        return bm

    def _check_tracking(self, what: str) -> None:
        if not self.tracking:
            raise StateError(f"DirtyTracker.{what}() before start(): the kernel answers "
                             "VFIO_IOMMU_DIRTY_PAGES(GET_BITMAP) with EINVAL while tracking is off",
                             hint="call tracker.start() first, or use `with DirtyTracker(iommu) as t:`")

    def report_mappings(self, mappings: Iterable[DmaMapping] | None = None) -> list[tuple[DmaMapping, DirtyBitmap]]:
        """One DirtyBitmap per mapping (default: every pyvfio mapping), one GET_BITMAP each."""
        res = []
        for m in (self._live() if mappings is None else list(mappings)):
            if m.closed or m.iommu is not self.iommu:
                raise StateError(f"{m!r} is not a live mapping of this IOMMU")
            res.append((m, self.report(m.iova, m.size)))
        return res

    def unmap_and_report(self, mapping: DmaMapping) -> DirtyBitmap:
        """Unmap ``mapping`` with VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP and return its last
        dirty bitmap (base ``mapping.iova``). The handle is released once the kernel unmapped;
        ShortUnmapError if it removed less than the mapping."""
        if as_mapping(mapping).closed or mapping.iommu is not self.iommu:
            raise StateError(f"{mapping!r} is not a live mapping of this IOMMU")
        self._check_tracking("unmap_and_report")
        pg = self.page_size
        if mapping.size // pg > self.window_pages:
            raise RangeError(f"{mapping!r} needs a bitmap above max_dirty_bitmap_size; report it "
                             "in windows and unmap it without a bitmap")
        bm = DirtyBitmap.zeros(mapping.size // pg, page_size=pg, base=mapping.iova)
        done = self.ops.unmap_dma(mapping.iova, mapping.size, bm, pg)
        self.iommu._forget(mapping)
        self.stats.calls += 1
        self.stats.pages_reported += bm.npages
        if done != mapping.size:
            raise ShortUnmapError(5, f"unmapped {done:#x} of {mapping.size:#x} bytes at {mapping.iova:#x}",
                                  op="VFIO_IOMMU_UNMAP_DMA(GET_DIRTY_BITMAP)", path=self.iommu.container.path)
        return bm

    def watch(self, seconds: float, interval: float = 1.0, *, iova: int | None = None,
              size: int | None = None, during: Callable[[], None] | None = None) -> Iterator[WatchSample]:
        """Report every ``interval`` seconds for ``seconds``; yields a WatchSample per report
        (the bitmap buffer is reused). ``during`` runs at the start of each interval (a
        workload: e.g. device DMA to watch)."""
        if seconds <= 0 or interval <= 0:
            raise ArgumentError("seconds and interval must be positive")
        if not self.tracking:
            self.start()
        t0 = last = time.monotonic()
        out: DirtyBitmap | None = None
        total = 0
        self.report(iova, size)  # discard what accumulated before the first interval
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                return
            if during is not None:
                during()
                now = time.monotonic()
            time.sleep(max(0.0, min(interval - (now - last), seconds - (now - t0))))
            bm = self.report(iova, size, out=out)
            out = bm
            now = time.monotonic()
            n = bm.count()
            total += n
            yield WatchSample(now - t0, n, n / max(now - last, 1e-9), total)
            last = now

    def __repr__(self) -> str:
        return (f"<DirtyTracker {'on' if self.tracking else 'off'} page={self.page_size:#x} "
                f"window={self.window_pages} pages>")


class DeviceDirtyLog:
    """Device-side DMA logging of ``device`` over chosen IOVA ranges (DMA_LOGGING_*).

    ``probe()`` says whether the device can; ``start()`` validates the ranges before the
    syscall (alignment, overlap, at most 256); ``report(iova, length)`` returns a DirtyBitmap
    (one call; bits only for the pages the device wrote, cleared after reading).
    """

    def __init__(self, device: Any) -> None:
        self.logging = DmaLogging(device)

    def probe(self) -> LoggingSupport:
        return self.logging.probe()

    @property
    def page_size(self) -> int:
        return self.logging.page_size

    def start(self, ranges: Sequence[tuple[int, int]], page_size: int = 4096) -> int:
        """Start logging; returns the page size the device settled on."""
        return self.logging.start(ranges, page_size)

    def stop(self) -> None:
        self.logging.stop()

    def report(self, iova: int, length: int, *, page_size: int | None = None) -> DirtyBitmap:
        """The pages the device wrote in [iova, iova+length) (base ``iova``)."""
        ps = page_size or self.logging.page_size or 4096
        bm = DirtyBitmap.zeros(-(-length // ps), page_size=ps, base=iova)
        self.logging.report(iova, length, bm, ps)
        return bm

    def report_ranges(self) -> list[DirtyBitmap]:
        """One DirtyBitmap per range given to start()."""
        return [self.report(a, n) for a, n in self.logging.ranges]

    def close(self) -> None:
        self.logging.close()

    def __enter__(self) -> "DeviceDirtyLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
