"""Dirty-page tracking scenarios, identical on the mock and in the guest.

Which pages are dirty depends on who tracks, so every scenario computes its expectation from
:func:`semantics`:

* ``"pinned"`` — the real kernel: vfio_iommu_type1 with a plain vfio-pci device (edu) has a
  group that cannot report the pages it dirtied (``num_non_pinned_groups > 0``), so every
  GET_BITMAP / unmap-with-bitmap marks *every page of every mapping* dirty, written or not,
  and holes stay clean;
* ``"exact"`` — the mock kernel by default: its IOMMU marks exactly the pages the simulated
  edu DMA engine wrote since the last report (what a hardware dirty bit gives);

the mock can also be switched to ``"pinned"`` (tests/vfio/test_dirty.py runs every scenario both
ways, as ``[mock-exact-...]`` and ``[mock-pinned-...]``), which proves the mock reproduces the real kernel's answer for the same calls. Errnos,
window plans and the holes rule (words the kernel does not cover are left as they were) are the
same for both.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest

from pyvfio import ioctls
from pyvfio.errors import InvalidArgumentError, PermissionDeniedError, RangeError, UnsupportedError
from pyvfio.core.bitmap import DirtyBitmap
from pyvfio.services.dirty import DirtyTracker, or_shifted
from pyvfio.services.dma import DmaBuffer
from pyvfio.uapi import ffi
from pyvfio.vfio import Container, Group
from pyvfio.vfio.dirty import DmaLogging, dirty_pages

from . import CountingBackend, Env
from .type1 import _edu

PAGE = 4096
BASE = 0x1000000  # 16 MiB: inside edu's 28-bit DMA mask


def semantics(env: Env) -> str:
    """"pinned" on the real kernel (no vendor driver: all mapped pages dirty), else the mock's
    setting (default "exact": the pages DMA wrote)."""
    if not env.is_mock:
        return "pinned"
    return str(env.facts.get("dirty_semantics", "exact"))


def expected(env: Env, npages: int, mapped: list[tuple[int, int]], written: set[int]) -> set[int]:
    """Pages of a report over ``npages`` pages expected dirty: ``mapped`` are (first, n) runs of
    mapped pages, ``written`` the pages DMA wrote."""
    if semantics(env) == "pinned":
        return {p for a, n in mapped for p in range(a, a + n)}
    return set(written)


@contextmanager
def session(env: Env) -> Iterator[tuple[object, object, object, DmaBuffer]]:
    """edu opened through VFIO (type1v2) with its device buffer loaded with a 0x5a pattern from a
    read-only source mapping; yields (backend, opened, edu, source buffer)."""
    be, opened, edu = _edu(env)
    with opened:
        src = DmaBuffer(PAGE, hugepages=None)
        src.write(0, b"\x5a" * PAGE)
        ms = opened.iommu.map(src, 0x800000, write=False)
        edu.to_device(ms.iova, 4095)
        yield be, opened, edu, src
        src.close()


def write_pages(edu, base: int, pages: Iterator[int] | list[int], buf: DmaBuffer | None = None,
                buf_first_page: int = 0) -> None:
    """edu writes 64 bytes at offset 256 of each page (device → RAM); checks they landed."""
    for p in pages:
        edu.from_device(base + p * PAGE + 256, 64)
        if buf is not None:
            off = (p - buf_first_page) * PAGE + 256
            assert buf.read(off, 64) == b"\x5a" * 64, f"edu DMA to page {p} did not land"


def scenario_report_after_edu_dma(env: Env) -> None:
    """Start tracking, edu writes two pages of a 16-page mapping; the report covers the mapping:
    pinned → all 16 pages (and again at the next report), exact → the two pages (then none)."""
    with session(env) as (_be, opened, edu, _src):
        buf = DmaBuffer(16 * PAGE, hugepages=None)
        m = opened.iommu.map(buf, BASE)
        with DirtyTracker(opened.iommu) as t:
            assert t.page_size == PAGE and t.tracking
            write_pages(edu, BASE, [2, 9], buf)
            bm = t.report(BASE, 16 * PAGE)
            assert bm.base == BASE and bm.npages == 16
            assert set(bm.pages().tolist()) == expected(env, 16, [(0, 16)], {2, 9})
            again = t.report(BASE, 16 * PAGE)
            assert set(again.pages().tolist()) == expected(env, 16, [(0, 16)], set())
            # the per-mapping report agrees
            per = t.report_mappings([m])
            assert per[0][0] is m and per[0][1].npages == 16
        assert not t.tracking
        m.unmap()
        buf.close()


# mappings (first page, pages) of the window layout, relative to BASE
LAYOUT = [(0, 100), (128, 64), (192, 70), (300, 40)]
WRITES = [3, 130, 250, 301, 339]


def scenario_windows_stitched(env: Env) -> None:
    """A report over 340 pages with 16-byte windows (128 pages) is split at hole/mapping
    boundaries into 4 windows (3 written in place, 1 through a scratch bitmap) and equals the
    same writes reported one mapping at a time and stitched together."""
    with session(env) as (_be, opened, edu, _src):
        bufs = [DmaBuffer(n * PAGE, hugepages=None) for _a, n in LAYOUT]
        maps = [opened.iommu.map(b, BASE + a * PAGE) for b, (a, _n) in zip(bufs, LAYOUT)]
        total = LAYOUT[-1][0] + LAYOUT[-1][1]
        with DirtyTracker(opened.iommu, max_bitmap_bytes=16) as t:
            plan = t.plan(BASE, total * PAGE)
            assert [(w.first_page, w.npages, w.direct) for w in plan] == \
                [(0, 128, True), (128, 64, True), (192, 108, True), (300, 40, False)]
            t.report(BASE, total * PAGE)  # clear what mapping did
            write_pages(edu, BASE, WRITES)
            multi = t.report(BASE, total * PAGE)
            assert t.stats.copied_windows == 2  # one per report
            write_pages(edu, BASE, WRITES)
            stitched = DirtyBitmap.zeros(total, base=BASE)
            for m in maps:  # single windows, one per mapping
                one = t.report(m.iova, m.size)
                or_shifted(stitched, (m.iova - BASE) // PAGE, one)
            assert multi == stitched
            assert set(multi.pages().tolist()) == expected(env, total, LAYOUT, set(WRITES))
            # a window size that needs no split gives the same answer
            big = DirtyTracker(opened.iommu)
            write_pages(edu, BASE, WRITES)
            assert len(big.plan(BASE, total * PAGE)) == 1
            assert big.report(BASE, total * PAGE) == multi
        for m, b in zip(maps, bufs):
            m.unmap()
            b.close()


def _raw_get(be, container_fd: int, iova: int, size: int, words: np.ndarray, pgsize: int = PAGE,
             nbytes: int | None = None, flags: int = ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP) -> None:
    hdr = ffi.offsetof("struct vfio_iommu_type1_dirty_bitmap", "data")
    raw = ffi.new("char[]", hdr + ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get"))
    d = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", raw)
    d.argsz = len(ffi.buffer(raw))
    d.flags = flags
    g = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", d.data)
    g.iova, g.size = iova, size
    g.bitmap.pgsize = pgsize
    g.bitmap.size = words.nbytes if nbytes is None else nbytes
    g.bitmap.data = ffi.cast("uint64_t *", words.ctypes.data)
    be.ioctl(container_fd, ioctls.VFIO_IOMMU_DIRTY_PAGES, d)


def scenario_holes_and_bisection(env: Env) -> None:
    """GET_BITMAP over [M1 | two words of hole | M2]: succeeds; the kernel writes only the words
    the mappings cover (hole words pre-set to ones stay ones) — a range entirely in a hole
    leaves the bitmap untouched; a range that cuts M1 or M2 → EINVAL. pyvfio's tracker refuses
    the cut before any syscall and reports holes clean."""
    with session(env) as (be, opened, edu, _src):
        b1, b2 = DmaBuffer(64 * PAGE, hugepages=None), DmaBuffer(64 * PAGE, hugepages=None)
        m1 = opened.iommu.map(b1, BASE)
        m2 = opened.iommu.map(b2, BASE + 192 * PAGE)
        cfd = opened.container.fileno()
        ops = dirty_pages(opened.iommu)
        ops.start()
        try:
            write_pages(edu, BASE, [5, 200])
            words = np.full(4, 0xFFFF_FFFF_FFFF_FFFF, dtype="<u8")
            _raw_get(be, cfd, BASE, 256 * PAGE, words)
            full = 0xFFFF_FFFF_FFFF_FFFF
            if semantics(env) == "pinned":
                assert [int(w) for w in words] == [full, full, full, full]
            else:
                assert [int(w) for w in words] == [1 << 5, full, full, 1 << 8]
            # entirely inside the hole: nothing to report, the buffer is not touched
            hole = np.full(2, 0x1234, dtype="<u8")
            _raw_get(be, cfd, BASE + 64 * PAGE, 128 * PAGE, hole)
            assert hole.tolist() == [0x1234, 0x1234]
            for iova, size in ((BASE + PAGE, 255 * PAGE), (BASE, 193 * PAGE), (BASE + 32 * PAGE, 64 * PAGE)):
                with pytest.raises(InvalidArgumentError) as ei:
                    _raw_get(be, cfd, iova, size, np.zeros(4, dtype="<u8"))
                assert ei.value.errno == errno.EINVAL
            counting = CountingBackend(be)
            t = DirtyTracker(opened.iommu)
            t.ops.iommu.backend = counting  # type: ignore[misc]
            try:
                n0 = len(counting.ops)
                with pytest.raises(RangeError):
                    t.report(BASE, 193 * PAGE)
                assert len(counting.ops) == n0, "a syscall was issued for a range cutting a mapping"
            finally:
                t.ops.iommu.backend = be  # type: ignore[misc]
            write_pages(edu, BASE, [5, 200])
            bm = t.report(BASE, 256 * PAGE)
            assert set(bm.pages().tolist()) == expected(env, 256, [(0, 64), (192, 64)], {5, 200})
        finally:
            ops.stop()
        m1.unmap()
        m2.unmap()
        b1.close()
        b2.close()


def scenario_errors_start_stop(env: Env) -> None:
    """GET_BITMAP before START → EINVAL; START twice and STOP twice → 0; START|STOP together →
    EINVAL; no flag → EINVAL; pgsize 8 KiB → EINVAL; bitmap one word short → EINVAL;
    unaligned iova → EINVAL; GET_BITMAP after STOP → EINVAL; unmap-with-bitmap after STOP →
    EINVAL and nothing unmapped."""
    with session(env) as (be, opened, _edu_, _src):
        buf = DmaBuffer(128 * PAGE, hugepages=None)
        m = opened.iommu.map(buf, BASE)
        cfd = opened.container.fileno()
        w = np.zeros(2, dtype="<u8")

        def einval(**kw) -> None:
            with pytest.raises(InvalidArgumentError) as ei:
                _raw_get(be, cfd, kw.pop("iova", BASE), kw.pop("size", 128 * PAGE), kw.pop("words", w), **kw)
            assert ei.value.errno == errno.EINVAL

        einval()
        ops = dirty_pages(opened.iommu)
        ops.start()
        ops.start()
        einval(flags=ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | ioctls.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)
        einval(flags=0)
        einval(pgsize=2 * PAGE)
        einval(nbytes=8)
        einval(iova=BASE + 512)
        _raw_get(be, cfd, BASE, 128 * PAGE, w)  # the well-formed call works
        ops.stop()
        ops.stop()
        einval()
        with pytest.raises(InvalidArgumentError):
            ops.unmap_dma(BASE, 128 * PAGE, (int(w.ctypes.data), 16))
        assert opened.iommu.unmap_dma(BASE, 128 * PAGE) == 128 * PAGE  # still mapped until now
        opened.iommu._forget(m)
        buf.close()


def scenario_unmap_with_bitmap(env: Env) -> None:
    """unmap_and_report returns the mapping's final bitmap (pinned: every page; exact: the pages
    written since the last report) and releases the handle; a raw unmap-with-bitmap over two
    mappings and a hole returns their sizes and bits at their offsets; a mapping made after
    START is tracked too."""
    with session(env) as (_be, opened, edu, _src):
        a, b = DmaBuffer(32 * PAGE, hugepages=None), DmaBuffer(8 * PAGE, hugepages=None)
        with DirtyTracker(opened.iommu) as t:
            ma = opened.iommu.map(a, BASE)  # mapped after START
            write_pages(edu, BASE, [1, 31], a)
            last = t.unmap_and_report(ma)
            assert ma.closed and ma.iova not in opened.iommu.mappings
            assert last.base == BASE and last.npages == 32
            assert set(last.pages().tolist()) == expected(env, 32, [(0, 32)], {1, 31})
            ma2 = opened.iommu.map(a, BASE)  # the IOVA is free again
            mb = opened.iommu.map(b, BASE + 64 * PAGE)
            write_pages(edu, BASE, [4, 66])
            bm = DirtyBitmap.zeros(72, base=BASE)
            done = t.ops.unmap_dma(BASE, 72 * PAGE, bm, PAGE)
            assert done == 40 * PAGE
            opened.iommu._forget(ma2)
            opened.iommu._forget(mb)
            assert set(bm.pages().tolist()) == expected(env, 72, [(0, 32), (64, 8)], {4, 66})
        a.close()
        b.close()


def scenario_type1_v1_eacces(env: Env) -> None:
    """DIRTY_PAGES on a VFIO_TYPE1_IOMMU (v1) container → EACCES (PermissionError) with a hint."""
    be = env.backend()
    with Container(backend=be) as c:
        c.attach(Group.from_bdf(env.bdf, backend=be))
        iommu = c.set_iommu("TYPE1")
        ops = dirty_pages(iommu)
        with pytest.raises(PermissionDeniedError) as ei:
            ops.start()
        assert ei.value.errno == errno.EACCES and "type1v2" in (ei.value.hint or "").lower()


def scenario_edu_has_no_dma_logging(env: Env) -> None:
    """edu (plain vfio-pci) has no DMA logging: PROBE says unsupported for START/STOP/REPORT and
    start() raises UnsupportedError (ENOTTY) with a hint naming the IOMMU alternative, before or
    after which type1 tracking still works."""
    with session(env) as (_be, opened, _edu_, _src):
        log = DmaLogging(opened.device)
        sup = log.probe()
        assert (sup.start, sup.stop, sup.report, sup.supported) == (False, False, False, False)
        with pytest.raises(UnsupportedError) as ei:
            log.start([(BASE, 16 * PAGE)])
        assert ei.value.errno == errno.ENOTTY and "DIRTY_PAGES" in (ei.value.hint or "")
        assert not log.active
        with pytest.raises(UnsupportedError):
            log.report(BASE, 16 * PAGE, DirtyBitmap.zeros(16))
        log.close()  # nothing started: no syscall, no error


ALL = [
    scenario_report_after_edu_dma,
    scenario_windows_stitched,
    scenario_holes_and_bisection,
    scenario_errors_start_stop,
    scenario_unmap_with_bitmap,
    scenario_type1_v1_eacces,
    scenario_edu_has_no_dma_logging,
]
