"""Dirty-page tracking on the mock kernel and on the real kernel in the QEMU guests.

The shared scenarios (tests/scenarios/dirty.py) run on the mock twice: with its default "exact"
semantics (``[mock-exact-...]``: its IOMMU reports exactly the pages the simulated edu wrote) and
with "pinned" (``[mock-pinned-...]``), the real type1's semantics without a vendor driver (every
mapped page dirty at each report) — the latter must give the very answers the guest run gives.
In the guests (``[intel-...]``, ``[amd-...]``; edu bound to vfio-pci by the test bed's agent) the
expectations are the real type1's: with a plain vfio-pci device every page of every mapping is
reported dirty at each report (the kernel cannot see device writes), holes stay as they were,
and edu has no DMA logging (ENOTTY). Then what only the mock can show: device DMA logging with a
logger, the IOMMU-type dispatch of 0x3b75, random window plans.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scenarios import CountingBackend, Env, scenario_id
from scenarios import dirty as sc

from pyvfio.errors import (AlignmentError, ArgumentError, InvalidArgumentError, OverlapError,
                           RangeError, UnsupportedError)
from pyvfio.seam.mock import MockBackend
from pyvfio.core.bitmap import DirtyBitmap
from pyvfio.services.dirty import DeviceDirtyLog, DirtyTracker, or_shifted
from pyvfio.services.dma import DmaBuffer
from pyvfio.vfio import IommuBase, open_device
from pyvfio.vfio.dirty import LOG_MAX_RANGES, DmaLogging, dirty_pages
from pyvfio.vfio.edu import EduDevice
from pyvfio.mockkernel.pci import dmalog as _dmalog
from pyvfio.testing import Machine, machine

PAGE = 4096
BASE = sc.BASE


@pytest.fixture
def mock_env(be, backend_name) -> Env:
    """The mock kernel with the dirty semantics the backend names (``mock-exact``, ``mock-pinned``)."""
    semantics = backend_name.removeprefix("mock-")
    machine(be).set_dirty_semantics(semantics)
    return Env("mock", lambda: be, facts={"dirty_semantics": semantics})


@pytest.mark.backends("mock-exact", "mock-pinned", "intel", "amd")
@pytest.mark.parametrize("scenario", sc.ALL, ids=scenario_id)
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


# -- device DMA logging with a logger (edu has none in QEMU; the mock can give it one) ----------


def _edu_with_logger(be, **kw):
    sim = machine(be).device("0000:00:03.0")
    logger = _dmalog.enable_device_logging(sim, **kw)
    opened = open_device("0000:00:03.0", backend=be)
    edu = EduDevice(opened.device)
    edu.enable_bus_master()
    return be, opened, edu, logger


def test_device_logging_reports_exactly_written_pages_inside_ranges(be, no_fd_leak):
    """Writes inside the two logged ranges are reported page for page; writes outside (in a
    mapped but unlogged buffer) are not; reading clears; stop ends logging (REPORT → EINVAL)."""
    be, opened, edu, logger = _edu_with_logger(be)
    with opened:
        buf = DmaBuffer(96 * PAGE, hugepages=None)
        src = DmaBuffer(PAGE, hugepages=None)
        src.write(0, b"\x5a" * PAGE)
        opened.iommu.map(src, 0x800000, write=False)
        opened.iommu.map(buf, BASE)
        edu.to_device(0x800000, 4095)
        log = DeviceDirtyLog(opened.device)
        assert log.probe().supported
        assert log.start([(BASE + 64 * PAGE, 16 * PAGE), (BASE, 32 * PAGE)]) == PAGE
        inside, outside = [0, 7, 31, 64, 79], [32, 40, 63, 80, 95]
        sc.write_pages(edu, BASE, inside + outside)
        a, b = log.report_ranges()  # sorted: [BASE, +32 pages), [BASE+64 pages, +16 pages)
        assert a.pages().tolist() == [0, 7, 31] and a.base == BASE
        assert b.pages().tolist() == [0, 15] and b.base == BASE + 64 * PAGE
        whole = log.report(BASE, 96 * PAGE)
        assert whole.count() == 0  # read and cleared
        sc.write_pages(edu, BASE, inside + outside)
        whole = log.report(BASE, 96 * PAGE)
        assert whole.pages().tolist() == inside  # nothing outside the ranges
        log.stop()
        with pytest.raises(InvalidArgumentError):
            log.report(BASE, 96 * PAGE)
        log.close()
        src.close()
        buf.close()


def test_device_logging_limits_and_errors(be, no_fd_leak):
    """Checks before the syscall (alignment, overlap, > 256 ranges, page size); the kernel's
    answers for the same mistakes (EINVAL, E2BIG); start twice → EINVAL; page size rounded up to
    what the device tracks; more ranges than the device holds are combined across the smallest
    gap (so that gap is tracked too)."""
    be, opened, edu, logger = _edu_with_logger(be, max_ranges=2, pgsize_bitmap=0x2000 | 0x200000)
    with opened:
        log = DmaLogging(opened.device)
        counting = CountingBackend(be)
        log.device.backend = counting
        for bad, exc in (([], ArgumentError), ([(BASE, 100)], AlignmentError),
                         ([(BASE, 4 * PAGE), (BASE + 2 * PAGE, 4 * PAGE)], OverlapError),
                         ([(BASE + i * 2 * PAGE, PAGE) for i in range(LOG_MAX_RANGES + 1)], RangeError)):
            with pytest.raises(exc):
                log.start(bad)
        with pytest.raises(AlignmentError):
            log.start([(BASE, PAGE)], page_size=1000)
        assert counting.ops == [], "a syscall was issued for ranges pyvfio could refuse"
        log.device.backend = be
        # the kernel's own answers (bypassing the checks)
        from pyvfio.vfio import dirty as vd
        orig = vd.check_logging_ranges
        vd.check_logging_ranges = lambda r, p: list(r)
        try:
            with pytest.raises(OSError) as ei:
                log.start([(BASE + i * 2 * PAGE, PAGE) for i in range(LOG_MAX_RANGES + 1)])
            assert ei.value.errno == errno.E2BIG
            with pytest.raises(InvalidArgumentError):
                log.start([(BASE, 4 * PAGE), (BASE + 2 * PAGE, 4 * PAGE)])
        finally:
            vd.check_logging_ranges = orig
        # 3 ranges on a 2-range device, 4 KiB asked, 8 KiB tracked
        ps = log.start([(BASE, 8 * PAGE), (BASE + 10 * PAGE, 2 * PAGE), (BASE + 40 * PAGE, 8 * PAGE)])
        assert ps == 2 * PAGE and log.page_size == 2 * PAGE
        assert logger.ranges == [(BASE, BASE + 12 * PAGE), (BASE + 40 * PAGE, BASE + 48 * PAGE)]
        with pytest.raises(InvalidArgumentError):
            log.start([(BASE, 8 * PAGE)])
        buf = DmaBuffer(64 * PAGE, hugepages=None)
        opened.iommu.map(buf, BASE)
        sc.write_pages(edu, BASE, [9, 20])  # page 9 sits in the combined gap, 20 outside
        bm = DirtyBitmap.zeros(32)
        log.report(BASE, 64 * PAGE, bm, PAGE)  # 4 KiB report granules of 8 KiB tracked pages
        assert bm.pages().tolist() == [8, 9]
        log.close()
        assert not logger.active
        buf.close()


# -- dispatch by IOMMU type, tracker errors -----------------------------------------------------


class _FakeSpapr(IommuBase):
    TYPES = ()


def test_dirty_pages_never_sent_to_a_non_type1_iommu(be, no_fd_leak):
    """0x3b75 is VFIO_IOMMU_SPAPR_REGISTER_MEMORY on sPAPR: no request is issued there."""
    be = CountingBackend(be)
    with open_device("0000:00:03.0", backend=be) as d:
        fake = _FakeSpapr(d.container, 7)
        n = len(be.ops)
        with pytest.raises(UnsupportedError) as ei:
            dirty_pages(fake)
        assert "SPAPR_REGISTER_MEMORY" in ei.value.hint
        with pytest.raises(UnsupportedError):
            DirtyTracker(fake)
        assert len(be.ops) == n


def test_tracker_pre_checks_and_large_mapping(be, no_fd_leak):
    """Unaligned ranges and mappings larger than a window are refused before any syscall; an
    unmapped user bitmap gives EFAULT."""
    with open_device("0000:00:03.0", backend=be) as d, DmaBuffer(256 * PAGE, hugepages=None) as buf:
        d.iommu.map(buf, BASE)
        t = DirtyTracker(d.iommu, max_bitmap_bytes=16)
        with t:
            with pytest.raises(AlignmentError):
                t.report(BASE + 1, PAGE)
            with pytest.raises(RangeError):
                t.report(BASE, 256 * PAGE)  # 256 pages > a 128-page window
            with pytest.raises(OSError) as ei:
                t.ops.get_bitmap(BASE, 256 * PAGE, (4096, 32))
            assert ei.value.errno == errno.EFAULT
        assert t.stats.calls == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 70), st.integers(1, 90)), min_size=1, max_size=6),
       st.integers(1, 6), st.data())
def test_windowed_report_equals_one_window(layout, wbytes, data):
    """Random mapping layouts (random holes, unaligned boundaries) and window sizes: the
    windowed report equals a one-window report of the same marks."""
    be = MockBackend()
    with open_device("0000:00:03.0", backend=be) as d:
        iommu = d.iommu
        pos, maps, bufs = 0, [], []
        for gap, n in layout:
            pos += gap
            b = DmaBuffer(n * PAGE, hugepages=None)
            bufs.append(b)
            maps.append(iommu.map(b, BASE + pos * PAGE))
            pos += n
        drv = machine(be).iommu(d.container)
        small = DirtyTracker(iommu, max_bitmap_bytes=8 * wbytes)
        if max(m.size for m in maps) // PAGE > small.window_pages:
            small = DirtyTracker(iommu, max_bitmap_bytes=8 * ((max(m.size for m in maps) // PAGE + 63) // 64))
        big = DirtyTracker(iommu)
        small.start()
        pages = data.draw(st.lists(st.sampled_from([(m.iova - BASE) // PAGE + k for m in maps
                                                    for k in range(m.size // PAGE)]), max_size=30))
        for p in pages:
            Machine.mark_dirty(drv, BASE + p * PAGE, 1)
        a = small.report(BASE, pos * PAGE)
        for p in pages:
            Machine.mark_dirty(drv, BASE + p * PAGE, 1)
        b = big.report(BASE, pos * PAGE)
        assert a == b and set(a.pages().tolist()) == set(pages)
        small.close()
        for b_ in bufs:
            b_.close()
    machine(be).shutdown()


def test_or_shifted_matches_bit_by_bit():
    rng = np.random.default_rng(7)
    for first in (0, 1, 63, 64, 65, 130):
        src = DirtyBitmap.from_pages(77, rng.choice(77, 20, replace=False))
        dst = DirtyBitmap.from_pages(300, [0, 299])
        or_shifted(dst, first, src)
        want = {0, 299} | {first + p for p in src.pages().tolist()}
        assert set(dst.pages().tolist()) == want


def test_watch_counts_pages_per_interval(be, no_fd_leak):
    with open_device("0000:00:03.0", backend=be) as d, DmaBuffer(64 * PAGE, hugepages=None) as buf:
        d.iommu.map(buf, BASE)
        drv = machine(be).iommu(d.container)
        with DirtyTracker(d.iommu) as t:
            samples = []
            for s in t.watch(0.3, 0.1):
                samples.append(s)
                Machine.mark_dirty(drv, BASE, 5 * PAGE)  # 5 pages dirty before the next report
        assert samples and samples[0].dirty == 0
        assert all(s.dirty == 5 for s in samples[1:])
        assert samples[-1].total == 5 * (len(samples) - 1)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 700), st.sampled_from([1, 2, 3, 5, 1 << 18]), st.data())
def test_ranges_chunked_scan_matches_naive(npages, chunk, data):
    """DirtyBitmap.ranges() (classifies words chunk by chunk, expands only run edges) equals a
    bit-by-bit scan for sparse, dense and all-dirty bitmaps, whatever the chunk size."""
    from pyvfio.core import bitmap as B

    kind = data.draw(st.sampled_from(["random", "blocks", "full"]))
    if kind == "random":
        bits = np.array(data.draw(st.lists(st.booleans(), min_size=npages, max_size=npages)))
    else:
        bits = np.full(npages, kind == "full")
        for _ in range(data.draw(st.integers(0, 4))):
            a = data.draw(st.integers(0, npages - 1))
            b = data.draw(st.integers(a, npages))
            bits[a:b] = not bits[a]
    bm = DirtyBitmap.from_pages(npages, np.flatnonzero(bits))
    if npages % 64:
        bm.words[-1] |= ~np.uint64((1 << (npages % 64)) - 1)  # junk past the end is ignored
    edges = np.flatnonzero(np.diff(np.concatenate(([0], bits.astype(np.int8), [0])))).reshape(-1, 2)
    saved = B._CHUNK
    B._CHUNK = chunk
    try:
        got = bm.ranges()
    finally:
        B._CHUNK = saved
    assert got.tolist() == [[int(a), int(b - a)] for a, b in edges]


def test_cli_dirty_watch_json_counts_edu_writes():
    """``pyvfio --json --backend mock dirty watch``: one JSON document; with --edu-writes the
    mock reports at most K pages per interval (exact semantics), in total what was written."""
    import json

    from click.testing import CliRunner

    from pyvfio.cli import cli

    res = CliRunner().invoke(cli, ["--json", "--backend", "mock", "dirty", "watch", "0000:00:03.0",
                                   "--seconds", "0.4", "--interval", "0.1", "--size", "256K",
                                   "--edu-writes", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["mapped_pages"] == 64 and doc["page_size"] == PAGE and doc["samples"]
    assert all(1 <= s["dirty_pages"] <= 2 for s in doc["samples"])
    assert doc["dirty_pages_total"] == sum(s["dirty_pages"] for s in doc["samples"])
    bad = CliRunner().invoke(cli, ["--json", "--backend", "mock", "dirty", "watch", "0000:00:03.0",
                                   "--size", "12Q"], catch_exceptions=False)
    assert bad.exit_code == 2 and "size" in json.loads(bad.output)["error"]


def test_type1_and_device_logs_merge(be, no_fd_leak):
    """The IOMMU's report and the device's DMA log of the same range are DirtyBitmaps of the same
    shape: merge() ORs them (the migration loop's union of sources); report() without a range
    covers every pyvfio mapping, and ``out`` is reused."""
    from pyvfio.core.bitmap import merge

    be, opened, edu, _logger = _edu_with_logger(be)
    with opened:
        src = DmaBuffer(PAGE, hugepages=None)
        src.write(0, b"\x5a" * PAGE)
        opened.iommu.map(src, 0x800000, write=False)
        edu.to_device(0x800000, 4095)
        buf = DmaBuffer(64 * PAGE, hugepages=None)
        opened.iommu.map(buf, BASE)
        log = DeviceDirtyLog(opened.device)
        log.start([(BASE, 32 * PAGE)])
        with DirtyTracker(opened.iommu) as t:
            sc.write_pages(edu, BASE, [1, 40])
            iommu_bm = t.report(BASE, 64 * PAGE)
            dev_bm = log.report(BASE, 64 * PAGE)
            assert iommu_bm.pages().tolist() == [1, 40] and dev_bm.pages().tolist() == [1]
            assert merge(iommu_bm, dev_bm).pages().tolist() == [1, 40]
            sc.write_pages(edu, BASE, [63])
            whole = t.report()  # 0x800000 .. BASE + 64 pages: both mappings
            assert whole.base == 0x800000 and whole.npages == (BASE + 64 * PAGE - 0x800000) // PAGE
            assert whole.pages().tolist() == [(BASE - 0x800000) // PAGE + 63]
            again = t.report(out=whole)
            assert again is whole and whole.count() == 0
            with pytest.raises(ArgumentError):
                t.report(BASE, 64 * PAGE, out=whole)
        log.close()
        src.close()
        buf.close()


# -- real-kernel-only (in the guests) ----------------------------------------------------------


@pytest.mark.backends("intel", "amd")
def test_cli_dirty_watch_reports_every_mapped_page(env, no_fd_leak):
    """``pyvfio --json dirty watch`` on the real kernel: edu writes 2 pages per interval, yet each
    report holds every mapped page (the real type1 without a vendor driver cannot see device
    writes, so it reports all pinned pages dirty)."""
    import json

    from click.testing import CliRunner

    from pyvfio.cli import cli

    res = CliRunner().invoke(cli, ["--json", "dirty", "watch", env.bdf, "--seconds", "1.5", "--interval",
                                   "0.5", "--size", "64K", "--edu-writes", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["mapped_pages"] == 16 and doc["samples"]
    assert all(s["dirty_pages"] == 16 for s in doc["samples"]), doc["samples"]
