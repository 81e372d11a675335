"""Issue 12, item 2: state is checked before the syscall, with a StateError (or ArgumentError)
whose message and hint say what to do."""

from __future__ import annotations

import errno

import pytest

from pyvfio.errors import ArgumentError, BusyError, StateError
from pyvfio.iommufd import IommuFd
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dirty import DirtyTracker
from pyvfio.services.dma import DmaBuffer
from pyvfio.testing import standalone_device
from pyvfio.vfio import Group, open_device
from pyvfio.vfio.edu import EduDevice
from pyvfio.vfio.pci import PciCommand

BDF = "0000:00:03.0"


class Counting(MockBackend):
    """A mock backend that counts ioctls by request name."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def ioctl(self, fd, request, arg=0, **kw):  # type: ignore[no-untyped-def]
        self.calls.append(getattr(request, "name", str(request)))
        return super().ioctl(fd, request, arg, **kw)


def test_dirty_report_before_start_is_a_state_error() -> None:
    be = Counting()
    with open_device(BDF, backend=be) as d, DmaBuffer(1 << 20) as buf:
        d.iommu.map(buf, 0x100000)
        t = DirtyTracker(d.iommu)
        be.calls.clear()
        with pytest.raises(StateError, match="before start") as ei:
            t.report(0x100000, 1 << 20)
        assert ei.value.hint and "start()" in ei.value.hint
        assert be.calls == []  # refused before the ioctl (the kernel would say EINVAL)
        with pytest.raises(StateError):
            t.unmap_and_report(next(iter(d.iommu.mappings.values())))
        t.start()
        bm = t.report(0x100000, 1 << 20)
        assert t.stats.pages_reported == bm.npages == 256
        t.report()
        assert t.stats.pages_reported == 512
        t.close()


def test_edu_dma_with_bus_mastering_off_is_refused() -> None:
    with open_device(BDF, backend=MockBackend()) as d, DmaBuffer(4096) as buf:
        edu = EduDevice(d.device)
        m = d.iommu.map(buf, 0x100000)
        buf.write(0, b"hello")
        assert not d.device.config.bus_master
        with pytest.raises(StateError, match="bus mastering is off") as ei:
            edu.to_device(m.iova, 5)
        assert "enable_bus_master" in (ei.value.hint or "")
        edu.enable_bus_master()
        edu.to_device(m.iova, 5)
        edu.from_device(m.iova + 8, 5)
        assert buf.read(8, 5) == b"hello"


def test_bar_read_with_memory_decoding_off() -> None:
    dev = standalone_device("edu")
    try:
        assert dev.read_u32(0, 0) == 0x010000ED
        dev.config.update_command(clear=PciCommand.MEMORY)
        with pytest.raises(StateError, match="memory space is off") as ei:
            dev.read_u32("BAR0", 0)
        assert "PCI_COMMAND_MEMORY" in (ei.value.hint or "")
        dev.config.update_command(set=PciCommand.MEMORY)
        assert dev.read_u32(0, 0) == 0x010000ED
        dev.config.update_command(clear=PciCommand.MEMORY)  # checked again after each change
        with pytest.raises(StateError):
            dev.write_u32(0, 4, 1)
    finally:
        dev.close()


def test_dirty_tracker_given_an_ioas() -> None:
    with IommuFd(backend=MockBackend()) as fd:
        ioas = fd.ioas_alloc()
        with pytest.raises(ArgumentError, match="type1 IOMMU") as ei:
            DirtyTracker(ioas)  # type: ignore[arg-type]
        msg = str(ei.value)
        assert "hwpt_alloc" in msg and "get_dirty_bitmap" in msg and "sPAPR" not in msg


def test_legacy_open_while_this_process_holds_the_cdev() -> None:
    be = MockBackend()
    with IommuFd(backend=be) as fd:
        bound = fd.bind(BDF)
        with pytest.raises(BusyError) as ei:
            Group.from_bdf(BDF, backend=be)
        assert ei.value.errno == errno.EBUSY
        hint = ei.value.hint or ""
        assert "this process holds /dev/vfio/devices/vfio0" in hint and "cannot inspect" not in hint
        bound.close()
    with Group.from_bdf(BDF, backend=be) as g:  # free again once the cdev is closed
        assert g.viable
