"""DmaBuffer when munmap fails (issue 21, item 8), on the mock with injected faults."""

from __future__ import annotations

import errno
import gc

import pytest

from pyvfio.errors import PyvfioError
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer
from pyvfio.testing import FaultyBackend


class Recording(FaultyBackend):
    """Also remembers every mmap'd and munmap'd range."""

    def __init__(self, inner):
        super().__init__(inner)
        self.mapped: list[tuple[int, int]] = []
        self.unmapped: list[tuple[int, int]] = []

    def mmap(self, length, prot, flags, fd=-1, offset=0):
        addr = super().mmap(length, prot, flags, fd, offset)
        self.mapped.append((addr, length))
        return addr

    def munmap(self, addr, length):
        super().munmap(addr, length)
        self.unmapped.append((addr, length))


def _maps_overlapping(addr: int, length: int) -> list[str]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo < addr + length and addr < hi:
                out.append(line.strip())
    return out


@pytest.mark.parametrize("nth", [1, 2])
def test_failed_trim_gives_the_whole_reservation_back(nth):
    be = Recording(MockBackend())
    be.fail("munmap", err=errno.EINVAL, nth=nth)
    with pytest.raises(PyvfioError):
        DmaBuffer(4096, hugepages="thp", backend=be)   # 2 MiB aligned: a reservation, trimmed
    (raw, raw_len), = be.mapped
    assert (raw, raw_len) in be.unmapped
    assert _maps_overlapping(raw, raw_len) == []


def test_failed_release_munmap_warns():
    be = FaultyBackend(MockBackend())
    buf = DmaBuffer(4096, hugepages=None, backend=be)
    be.fail("munmap", err=errno.EINVAL)
    with pytest.warns(ResourceWarning, match="munmap"):
        buf.close()
    assert buf.closed
    be.clear()
    be._inner.munmap(buf.addr, buf.size)  # what the failed munmap left behind


def test_finalizer_munmap_failure_warns():
    be = FaultyBackend(MockBackend())
    buf = DmaBuffer(4096, hugepages=None, backend=be)
    addr, size = buf.addr, buf.size
    be.fail("munmap", err=errno.EINVAL)
    with pytest.warns(ResourceWarning, match="munmap"):
        del buf
        gc.collect()
    be.clear()
    be._inner.munmap(addr, size)


# -- DirtyTracker ranges are bounded by the IOMMU's aperture (issue 21, item 4) -----------------
from pyvfio.errors import RangeError  # noqa: E402
from pyvfio.services.dirty import DirtyTracker  # noqa: E402
from pyvfio.testing import machine  # noqa: E402
from pyvfio.vfio import open_device  # noqa: E402


@pytest.mark.parametrize("iova, size", [(0, 1 << 40), (0, 1 << 63), (1 << 39, 4096),
                                        ((1 << 64) - 4096, 4096)])
def test_dirty_report_outside_the_aperture_is_refused_before_any_ioctl(be, iova, size):
    machine(be).set_dirty_semantics("exact")
    faulty = FaultyBackend(be)
    with open_device("0000:00:03.0", backend=faulty) as d, DmaBuffer(8192, hugepages=None) as buf:
        t = DirtyTracker(d.iommu, max_bitmap_bytes=16)   # 128 pages per GET_BITMAP
        assert t.aperture == (0, (1 << 39) - 1)          # the mock's type1 ranges
        m = d.iommu.map(buf, 0x100000)
        t.start()
        mark = faulty.mark()
        for call in (t.plan, t.report):
            with pytest.raises(RangeError, match="aperture"):
                call(iova, size)
        assert faulty.since(mark) == []
        bm = t.report(0x100000, 8192)                    # inside: works as before
        assert bm.npages == 2
        t.stop()
        m.unmap()


# -- a failed unbind leaves the device as it found it (issue 21, fault campaign) ---------------
import pytest as _pytest  # noqa: E402

from pyvfio.services import binding as _binding  # noqa: E402
from pyvfio.services.discovery import HostPaths, open_source  # noqa: E402
from pyvfio.testing import FaultyBackend as _Faulty, machine as _machine  # noqa: E402

NIC = "0000:00:02.0"


@_pytest.mark.parametrize("op", ["driver_override", "drivers_probe"])
def test_failed_unbind_puts_the_device_back(op):
    """The unbind's restore fails after the device left vfio-pci: it goes back to vfio-pci with
    its override (it was left driverless before), and a retry gives it to e1000e."""
    be = _Faulty(MockBackend())
    try:
        h = be.host
        paths = HostPaths(h.sys, h.proc, h.dev, h.state)
        core = _binding.DriverCore(paths, h)
        _binding.bind(open_source(paths.sys), NIC, paths=paths, core=core)
        m = _machine(be._inner)
        assert (m.entry(NIC).driver, m.driver_override(NIC)) == ("vfio-pci", "vfio-pci")
        be.fail("host_write", op, errno.EIO)
        with _pytest.raises(PyvfioError) as e:
            _binding.unbind(open_source(paths.sys), NIC, paths=paths, core=core)
        assert e.value.op == op
        assert (m.entry(NIC).driver, m.driver_override(NIC)) == ("vfio-pci", "vfio-pci")
        _binding.unbind(open_source(paths.sys), NIC, paths=paths, core=core)
        assert (m.entry(NIC).driver, m.driver_override(NIC)) == ("e1000e", None)
    finally:
        _machine(be._inner).shutdown()
