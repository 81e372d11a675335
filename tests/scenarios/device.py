"""Device-layer scenarios (regions, region I/O rules, mmap, config space, interrupts, reset,
features), identical on the mock and in the guest.

Each ``scenario_*`` function takes an :class:`~scenarios.Env` and asserts what the kernel and the
device did, with the values the x86 guest's kernel (6.12, vfio-pci) and QEMU's devices give: the
mock must give the same. tests/vfio/test_device.py runs them on both (``[mock-...]``,
``[intel-...]``, ``[amd-...]``). ``env.facts["devices"]`` lists the vfio-pci bound devices as ``{"name", "bdf"}``.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from pyvfio import ioctls as I
from pyvfio.errors import (ArgumentError, InvalidArgumentError, PyvfioError, RangeError, StateError,
                           UnsupportedError)
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.vfio import open_device
from pyvfio.vfio.device import Device, DeviceFlags, IrqFlags, PciIrq, PciRegion, RegionFlags
from pyvfio.vfio.edu import DMA_IRQ, EDU_IDENT, EduDevice
from pyvfio.eventfd import EventFd
from pyvfio.vfio.pci import PciCommand

from . import CountingBackend, Env

PAGE = mmap.PAGESIZE
CFG = PciRegion.CONFIG
#: How long to wait for an interrupt that must come, and for one that must not.
IRQ_TIMEOUT = 5.0
QUIET = 0.3


def bdf_of(env: Env, name: str) -> str:
    for d in env.facts.get("devices", []):
        if d.get("name") == name:
            return d["bdf"]
    if name == "edu":
        return env.bdf
    pytest.fail(f"no vfio-pci bound {name} in this environment: {env.facts.get('devices')}", pytrace=False)
    raise AssertionError


@contextmanager
def opened(env: Env, name: str = "edu", backend: Any = None) -> Iterator[Any]:
    """Container + group + type1v2 + the device, closed in order afterwards."""
    with open_device(bdf_of(env, name), backend=backend or env.backend()) as od:
        yield od


def _efault(dev: Device, fn: Any) -> int:
    with pytest.raises(OSError) as ei:
        fn()
    return int(ei.value.errno)


# ---------------------------------------------------------------------------------------------
# edu: identity, regions, mmap
# ---------------------------------------------------------------------------------------------


def scenario_edu_info_and_regions(env: Env) -> dict[str, Any]:
    """GET_INFO (PCI, no reset, 9 regions, 5 irqs), every region's flags and size, VGA EINVAL,
    ident through pread and through a BAR0 mapping, liveness inverse, irq infos."""
    with opened(env) as od:
        dev: Device = od.device
        info = dev.info
        assert info.flags == DeviceFlags.PCI and info.num_regions == 9 and info.num_irqs == 5
        assert not info.reset_supported and info.caps == ()
        regions = {r.index: r for r in dev.regions()}
        assert sorted(regions) == list(range(8)), "VGA (8) must answer EINVAL on edu"
        with pytest.raises(InvalidArgumentError):
            dev.region_info(PciRegion.VGA)
        bar0 = regions[0]
        assert bar0.flags == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP
        assert bar0.size == 1 << 20 and bar0.offset == 0 and bar0.caps == ()
        assert bar0.mmap_areas()[0].size == 1 << 20
        for i in range(1, 7):
            assert regions[i].size == 0 and regions[i].flags == 0, regions[i]
        assert regions[7].flags == RegionFlags.READ | RegionFlags.WRITE and regions[7].size == 256
        assert regions[7].offset == 7 << 40
        # ident: pread and mmap see the same register
        assert dev.read_u32(0, 0x00) == EDU_IDENT
        m = dev.mmap(0)
        assert m.size == 1 << 20 and m.read32(0x00) == EDU_IDENT
        # liveness through pread: the inverse of what was written (also visible in the mapping)
        for v in (0, 0x12345678, 0xFFFFFFFF, 0xA5A5A5A5):
            dev.write_u32(0, 0x04, v)
            assert dev.read_u32(0, 0x04) == ~v & 0xFFFFFFFF
            assert m.read32(0x04) == ~v & 0xFFFFFFFF
        edu = EduDevice(dev)
        assert edu.byteorder == "little" and edu.version == (1, 0) and edu.liveness(0x0BADF00D)
        assert edu.factorial(5) == 120 and edu.factorial(12) == 479001600
        # unimplemented edu registers read all-ones
        assert dev.read_u32(0, 0x100) == 0xFFFFFFFF
        irqs = {i.index: i for i in dev.irqs()}
        assert sorted(irqs) == [0, 1, 2, 4], "ERR (3) must answer EINVAL on a non-PCIe device"
        assert irqs[0].flags == IrqFlags.EVENTFD | IrqFlags.MASKABLE | IrqFlags.AUTOMASKED and irqs[0].count == 1
        assert irqs[1].flags == IrqFlags.EVENTFD | IrqFlags.NORESIZE and irqs[1].count == 1
        assert irqs[2].count == 0 and irqs[2].flags & IrqFlags.NORESIZE
        assert irqs[4].count == 1
        with pytest.raises(InvalidArgumentError):
            dev.irq_info(PciIrq.ERR)
    assert m.closed, "closing the device must unmap its mappings"
    return {"ident": EDU_IDENT, "regions": sorted(regions), "irqs": sorted(irqs)}


def scenario_region_io_rules(env: Env) -> None:
    """What the kernel answers at region edges: config past the end EFAULT, BAR past the end
    EINVAL, straddling the end a short read, VGA EINVAL, memory decoding off EIO, BAR sizing;
    pyvfio refuses such accesses before the syscall."""
    with opened(env) as od:
        dev: Device = od.device
        be, fd = dev.backend, dev.fileno()
        cfg_off = 7 << 40
        assert _efault(dev, lambda: be.pread(fd, 2, cfg_off + 255)) == errno.EFAULT
        assert _efault(dev, lambda: be.pread(fd, 1, cfg_off + 256)) == errno.EFAULT
        assert _efault(dev, lambda: be.pread(fd, 4, 1 << 20)) == errno.EINVAL
        assert len(be.pread(fd, 4, (1 << 20) - 2)) == 2  # short at the BAR end
        assert _efault(dev, lambda: be.pread(fd, 4, 8 << 40)) == errno.EINVAL  # VGA
        assert _efault(dev, lambda: be.pread(fd, 4, 1 << 40)) == errno.EINVAL  # BAR1: none
        with pytest.raises(RangeError):
            dev.read(CFG, 255, 2)
        with pytest.raises(RangeError):
            dev.read(0, (1 << 20) - 2, 4)
        with pytest.raises(ArgumentError):
            dev.read(1, 0, 4)  # empty region: nothing is readable
        # memory decoding off: the kernel answers a BAR access with EIO (vfio-pci checks the
        # command register); pyvfio checks the register first and says what to do
        cfg = dev.config
        cmd = cfg.command
        assert cmd & PciCommand.MEMORY
        cfg.command = cmd & ~PciCommand.MEMORY
        try:
            assert not cfg.memory_enabled
            with pytest.raises(StateError, match="BAR0 is not decoded: memory space is off") as ei:
                dev.read_u32(0, 0)
            assert ei.value.hint and "PCI_COMMAND_MEMORY" in ei.value.hint
            assert _efault(dev, lambda: be.pread(fd, 4, 0)) == errno.EIO
        finally:
            cfg.command = cmd
        assert dev.read_u32(0, 0) == EDU_IDENT
        # BAR sizing through the (virtualized) BAR register
        bar = cfg.read32(0x10)
        cfg.write32(0x10, 0xFFFFFFFF)
        assert cfg.read32(0x10) == 0xFFF00000  # 1 MiB, 32-bit, non-prefetchable memory
        cfg.write32(0x10, bar)
        assert cfg.read32(0x10) == bar
        # read-only header fields ignore writes
        cfg.write16(0x00, 0xBEEF)
        assert cfg.vendor_id == 0x1234
        # bus master toggles
        cfg.enable_bus_master()
        assert cfg.bus_master
        cfg.disable_bus_master()
        assert not cfg.bus_master
        # mmap: refused before the syscall for the config region and out-of-area ranges;
        # the kernel refuses private mappings and config-space mappings with EINVAL
        with pytest.raises(ArgumentError):
            dev.mmap(CFG)
        with pytest.raises(RangeError):
            dev.mmap(0, 0, 2 << 20)
        with pytest.raises(ArgumentError):
            dev.mmap(0, 100)
        assert _efault(dev, lambda: be.mmap(PAGE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 7 << 40)) == errno.EINVAL
        assert _efault(dev, lambda: be.mmap(PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)) == errno.EINVAL
        assert _efault(dev, lambda: be.mmap(2 << 20, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)) == errno.EINVAL
        # a mapping of part of BAR0 at a page offset reads the same as pread
        m = dev.mmap(0, 0, PAGE)
        assert m.read32(0) == dev.read_u32(0, 0)
        m.close()
        m.close()  # idempotent
        assert dev.mappings == ()


# ---------------------------------------------------------------------------------------------
# edu: interrupts
# ---------------------------------------------------------------------------------------------


def scenario_edu_msi(env: Env) -> dict[str, Any]:
    """MSI on an eventfd: edu's raise register (0x60) fires it once bus mastering is on (an MSI
    is a memory write); ack (0x64) clears the status; loopback triggers (DATA_NONE, DATA_BOOL);
    MSI mask is ENOTTY; INTx while MSI is enabled is EINVAL; a DMA with the IRQ bit raises 0x100."""
    with opened(env) as od:
        dev: Device = od.device
        edu = EduDevice(dev)
        dev.config.disable_bus_master()
        (efd,) = dev.enable_irq(PciIrq.MSI)
        assert dev.irq_eventfds(PciIrq.MSI) == [efd]
        edu.raise_irq(0x1)
        assert efd.wait(QUIET) == 0, "an MSI went out with bus mastering off"
        assert edu.irq_status == 0x1
        edu.ack_irq()
        assert edu.irq_status == 0
        dev.config.enable_bus_master()
        edu.raise_irq(0x1)
        got = efd.wait(IRQ_TIMEOUT)
        assert got == 1, f"edu's MSI did not reach the eventfd (count {got})"
        assert edu.irq_status == 0x1
        edu.ack_irq(0x1)
        assert edu.irq_status == 0 and efd.wait(QUIET) == 0
        # each raise is a new message (edge: a raise while the status is still set fires again;
        # wait for each, as two messages to one vector may coalesce in the CPU's APIC)
        edu.raise_irq(0x2)
        assert efd.wait(IRQ_TIMEOUT) == 1
        edu.raise_irq(0x4)
        assert efd.wait(IRQ_TIMEOUT) == 1 and edu.irq_status == 0x6
        edu.ack_irq()
        # loopback through the kernel
        dev.trigger_irq(PciIrq.MSI)
        assert efd.wait(IRQ_TIMEOUT) == 1
        dev.trigger_irq(PciIrq.MSI, values=[False])
        assert efd.wait(QUIET) == 0
        dev.trigger_irq(PciIrq.MSI, values=[True])
        assert efd.wait(IRQ_TIMEOUT) == 1
        with pytest.raises(UnsupportedError) as ei:
            dev.mask_irq(PciIrq.MSI)
        assert ei.value.errno == errno.ENOTTY
        with pytest.raises(InvalidArgumentError):
            dev.enable_irq(PciIrq.INTX)
        with pytest.raises(InvalidArgumentError):
            dev.trigger_irq(PciIrq.MSI, 0, 2)  # one vector only
        # factorial completion interrupt (status bit 7 -> status 0x1)
        assert edu.factorial(7, irq=True) == 5040
        assert efd.wait(IRQ_TIMEOUT) == 1, "no MSI for the factorial completion"
        assert edu.irq_status == 0x1
        edu.ack_irq()
        assert edu.factorial(3) == 6 and efd.wait(QUIET) == 0 and edu.irq_status == 0
        # DMA completion interrupt (command bit 2 -> status 0x100)
        mapper = DmaMapper(od.iommu, limit=edu.dma_mask + 1)
        with DmaBuffer(PAGE) as buf:
            buf.write(0, b"irq!" * 16)
            mb = mapper.map(buf, write=False)
            edu.to_device(mb.iova, 64, irq=True)
            assert efd.wait(IRQ_TIMEOUT) == 1, "no MSI for the DMA completion"
            assert edu.irq_status == DMA_IRQ
            edu.ack_irq(DMA_IRQ)
            mb.unmap()
        dev.disable_irq(PciIrq.MSI)
        assert efd.closed and dev.irq_eventfds(PciIrq.MSI) == []
        # loopback needs the type enabled
        with pytest.raises(InvalidArgumentError):
            dev.trigger_irq(PciIrq.MSI)
    return {"msi": "delivered"}


def scenario_edu_intx(env: Env) -> dict[str, Any]:
    """INTx on an eventfd: a raise fires once and automasks; a second raise while masked stays
    quiet; unmasking a still-asserted line fires again; after ack + unmask nothing fires; explicit
    MASK holds the line back; MSI while INTx is enabled is EINVAL; passing our own EventFd."""
    with opened(env) as od:
        dev: Device = od.device
        edu = EduDevice(dev)
        with EventFd(backend=dev.backend) as efd:
            assert dev.enable_irq(PciIrq.INTX, [efd]) == [efd]
            edu.raise_irq(0x1)
            assert efd.wait(IRQ_TIMEOUT) == 1, "edu's INTx did not reach the eventfd"
            edu.raise_irq(0x2)
            assert efd.wait(QUIET) == 0, "INTx fired while automasked"
            dev.unmask_irq(PciIrq.INTX)
            assert efd.wait(IRQ_TIMEOUT) == 1, "a still-asserted INTx must fire again on unmask"
            edu.ack_irq()
            dev.unmask_irq(PciIrq.INTX)
            assert efd.wait(QUIET) == 0, "INTx fired after ack"
            dev.mask_irq(PciIrq.INTX)
            edu.raise_irq(0x8)
            assert efd.wait(QUIET) == 0, "a masked INTx fired"
            edu.ack_irq()
            dev.unmask_irq(PciIrq.INTX)
            assert efd.wait(QUIET) == 0, "INTx fired after ack while masked"
            dev.trigger_irq(PciIrq.INTX)
            assert efd.wait(IRQ_TIMEOUT) == 1
            with pytest.raises(InvalidArgumentError):
                dev.enable_irq(PciIrq.MSI)
            with pytest.raises(InvalidArgumentError):
                dev.mask_irq(PciIrq.INTX, 0, 2)
            dev.disable_irq(PciIrq.INTX)
            assert not efd.closed, "an eventfd the caller passed stays the caller's"
            with pytest.raises(InvalidArgumentError):
                dev.mask_irq(PciIrq.INTX)  # INTx no longer enabled
    return {"intx": "delivered"}


def scenario_set_irqs_validation(env: Env) -> None:
    """SET_IRQS argument rules: not an eventfd → EINVAL; a closed fd → EBADF; vector range
    beyond the count → EINVAL; pyvfio rejects malformed flags before the syscall."""
    counting = CountingBackend(env.backend())
    with opened(env, backend=counting) as od:
        dev: Device = od.device
        r, w = os.pipe()
        try:
            with pytest.raises(InvalidArgumentError):
                dev.enable_irq(PciIrq.MSI, [r])
        finally:
            os.close(r)
            os.close(w)
        with pytest.raises(OSError) as ei:
            dev.enable_irq(PciIrq.MSI, [r])  # closed now
        assert ei.value.errno == errno.EBADF
        with pytest.raises(InvalidArgumentError):
            dev.enable_irq(PciIrq.MSI, count=2)
        assert dev.irq_eventfds(PciIrq.MSI) == [], "eventfds created for a refused enable leak"
        before = list(counting.ops)
        for bad in (I.VFIO_IRQ_SET_ACTION_TRIGGER,  # no DATA_
                    I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_DATA_BOOL | I.VFIO_IRQ_SET_ACTION_TRIGGER,
                    I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_MASK | I.VFIO_IRQ_SET_ACTION_UNMASK,
                    I.VFIO_IRQ_SET_DATA_NONE | I.VFIO_IRQ_SET_ACTION_TRIGGER | 0x100):
            with pytest.raises(ArgumentError):
                dev.set_irqs(PciIrq.MSI, bad, 0, 1)
        with pytest.raises(ArgumentError):
            dev.set_irqs(PciIrq.MSI, I.VFIO_IRQ_SET_DATA_EVENTFD | I.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, [])
        assert counting.ops == before, "malformed SET_IRQS reached the kernel"


# ---------------------------------------------------------------------------------------------
# reset, hot reset, features
# ---------------------------------------------------------------------------------------------


def scenario_reset_and_features(env: Env) -> dict[str, Any]:
    """edu has no reset method (flag clear; pyvfio reports it without a syscall, the kernel says
    EINVAL); no hot reset on the root bus (ENODEV); the e1000e resets (PM) and keeps its config
    (saved and restored around the reset). Feature probing: low-power entry/exit SET-only."""
    out: dict[str, Any] = {}
    counting = CountingBackend(env.backend())
    with opened(env, backend=counting) as od:
        dev: Device = od.device
        assert not dev.info.reset_supported
        before = list(counting.ops)
        with pytest.raises(UnsupportedError) as ei:
            dev.reset()
        assert counting.ops == before and "VFIO_DEVICE_FLAGS_RESET" in (ei.value.hint or "")
        with pytest.raises(InvalidArgumentError):
            dev.backend.ioctl(dev.fileno(), I.VFIO_DEVICE_RESET, 0)
        with pytest.raises(UnsupportedError) as ei:
            dev.hot_reset_info()
        assert ei.value.errno == errno.ENODEV and ei.value.hint
        feats = dev.features()
        for name in ("LOW_POWER_ENTRY", "LOW_POWER_ENTRY_WITH_WAKEUP", "LOW_POWER_EXIT"):
            assert feats[name] == (False, True), (name, feats[name])
        for name in ("PCI_VF_TOKEN", "MIGRATION", "MIG_DEVICE_STATE", "DMA_LOGGING_START", "BUS_MASTER"):
            assert feats[name] == (False, False), (name, feats[name])
        out["edu"] = {"reset": False, "features": {k for k, v in feats.items() if any(v)}}
    with opened(env, "e1000e") as od:
        dev = od.device
        assert dev.info.reset_supported
        cfg = dev.config
        cfg.enable_bus_master()
        dev.reset()
        assert cfg.bus_master and cfg.memory_enabled, "config space not restored after reset"
        assert cfg.vendor_id == 0x8086
        with pytest.raises(UnsupportedError):
            dev.hot_reset_info()
        out["e1000e"] = {"reset": True}
    return out


# ---------------------------------------------------------------------------------------------
# config space and the second device
# ---------------------------------------------------------------------------------------------

#: What pyvfio must find in config space, per device: (id, offset, extended, version).
EXPECTED_CAPS = {
    "edu": [(0x05, 0x40, False, 0)],
    "e1000e": [(0x01, 0xC8, False, 0), (0x05, 0xD0, False, 0), (0x10, 0xE0, False, 0),
               (0x11, 0xA0, False, 0), (0x01, 0x100, True, 2), (0x03, 0x140, True, 1)],
}


def scenario_config_capabilities(env: Env) -> dict[str, Any]:
    """The capability walks (standard and extended) of edu and the e1000e, header fields, MSI and
    MSI-X decoding agreeing with GET_IRQ_INFO, BARs agreeing with the region infos."""
    found: dict[str, Any] = {}
    for name in ("edu", "e1000e"):
        with opened(env, name) as od:
            cfg = od.device.config
            caps = [(c.id, c.offset, c.extended, c.version) for c in cfg.capabilities()]
            assert caps == EXPECTED_CAPS[name], (name, caps)
            found[name] = caps
            msi = cfg.msi()
            assert msi is not None and msi.vectors == od.device.irq_info(PciIrq.MSI).count == 1
            assert msi.is_64bit and not msi.maskable and not msi.enabled
            if name == "edu":
                assert (cfg.vendor_id, cfg.device_id, cfg.revision, cfg.class_code) == (0x1234, 0x11E8, 0x10, 0x00FF00)
                assert cfg.subsystem == (0x1AF4, 0x1100) and cfg.interrupt_pin == 1
                assert cfg.size == 256 and cfg.msix() is None
                bars = cfg.bars()
                assert [(b.index, b.size, b.kind, b.mappable) for b in bars] == [(0, 1 << 20, "mem32", True)]
            else:
                assert (cfg.vendor_id, cfg.device_id, cfg.class_code) == (0x8086, 0x10D3, 0x020000)
                assert cfg.size == 4096
                msix = cfg.msix()
                assert msix is not None
                assert msix.table_size == od.device.irq_info(PciIrq.MSIX).count == 5
                assert (msix.table_bar, msix.table_offset, msix.pba_bar, msix.pba_offset) == (3, 0, 3, 0x2000)
                bars = cfg.bars()
                assert [(b.index, b.size, b.kind, b.mappable) for b in bars] == [
                    (0, 128 << 10, "mem32", True), (1, 128 << 10, "mem32", True), (2, 32, "io", False),
                    (3, 16 << 10, "mem32", True)]
    return found


def scenario_e1000e_regions(env: Env) -> None:
    """The NIC's regions: MSI-X BAR mappable with the MSIX_MAPPABLE capability, I/O BAR not
    mappable, a read-only ROM; the MSI-X table is all-ones through pread (writes dropped) and
    real through a mapping (every vector starts masked); ERR irq exists on PCIe; MSI-X may be resized (no NORESIZE)."""
    with opened(env, "e1000e") as od:
        dev: Device = od.device
        r3 = dev.region_info(3)
        assert r3.flags == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP | RegionFlags.CAPS
        assert r3.msix_mappable and r3.sparse_areas is None and r3.size == 16 << 10
        assert [c.id for c in r3.caps] == [I.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE]
        r2 = dev.region_info(2)
        assert r2.flags == RegionFlags.READ | RegionFlags.WRITE and r2.size == 32 and not r2.mappable
        with pytest.raises(ArgumentError):
            dev.mmap(2)
        rom = dev.region_info(PciRegion.ROM)
        assert rom.flags == RegionFlags.READ and rom.size == 256 << 10
        with pytest.raises(ArgumentError):
            dev.write(PciRegion.ROM, 0, b"\0")
        assert dev.read(PciRegion.ROM, 0, 2) == b"\x55\xaa"
        (m,) = dev.mmap_areas(3)
        assert (m.offset, m.size) == (0, 16 << 10)
        # read/write of the MSI-X table through the fd is virtualized: reads all-ones, writes
        # dropped; the mapping shows the real table, every vector masked at start
        assert dev.read(3, 0, 5 * 16) == b"\xff" * 80
        for v in range(5):
            assert m.read32(v * 16 + 12) & 1, f"MSI-X vector {v} not masked at start"
        data0 = m.read32(8)
        dev.write_u32(3, 8, data0 ^ 0x5A5A)
        assert m.read32(8) == data0, "a pwrite into the MSI-X table was not dropped"
        # around the table (the PBA) read and mapping agree
        assert dev.read(3, 0x2000, 8) == m.read(0x2000, 8)
        assert dev.read(3, 0x40, 0x20) == b"\xff" * 0x10 + m.read(0x50, 0x10)  # straddles the table end
        err = dev.irq_info(PciIrq.ERR)
        assert err.count == 1
        assert not dev.irq_info(PciIrq.MSIX).flags & IrqFlags.NORESIZE
        (e0,) = dev.enable_irq(PciIrq.MSIX, count=1)
        more = dev.enable_irq(PciIrq.MSIX, start=1, count=2)  # dynamic MSI-X: grow while enabled
        dev.trigger_irq(PciIrq.MSIX, 0, 3)
        assert [e.wait(IRQ_TIMEOUT) for e in [e0, *more]] == [1, 1, 1]
        dev.disable_irq(PciIrq.MSIX)
        assert all(e.closed for e in [e0, *more])
    assert m.closed


# ---------------------------------------------------------------------------------------------
# lspci
# ---------------------------------------------------------------------------------------------

#: lspci's capability names -> standard capability IDs (pciutils ls-caps.c).
LSPCI_STD = [("Power Management", 0x01), ("AGP", 0x02), ("Vital Product Data", 0x03), ("Slot ID", 0x04),
             ("MSI-X", 0x11), ("MSI", 0x05), ("CompactPCI hot-swap", 0x06), ("PCI-X", 0x07),
             ("HyperTransport", 0x08), ("Vendor Specific Information", 0x09), ("Debug port", 0x0A),
             ("CompactPCI central resource control", 0x0B), ("PCI Hot-plug", 0x0C),
             ("Subsystem", 0x0D), ("AGP3", 0x0E), ("Secure device", 0x0F), ("Express", 0x10),
             ("SATA HBA", 0x12), ("PCI Advanced Features", 0x13), ("Enhanced Allocation", 0x14)]
#: lspci's extended capability names -> extended capability IDs (pciutils ls-ecaps.c).
LSPCI_EXT = [("Advanced Error Reporting", 0x01), ("Virtual Channel", 0x02), ("Device Serial Number", 0x03),
             ("Power Budgeting", 0x04), ("Root Complex Link", 0x05), ("Root Complex Internal Link", 0x06),
             ("Root Complex Event Collector", 0x07), ("Multi-Function Virtual Channel", 0x08),
             ("Root Complex Register Block", 0x0A), ("Vendor Specific Information", 0x0B),
             ("Access Control Services", 0x0D), ("Alternative Routing-ID Interpretation", 0x0E),
             ("Address Translation Service", 0x0F), ("Single Root I/O Virtualization", 0x10),
             ("Multicast", 0x12), ("Page Request Interface", 0x13), ("Physical Resizable BAR", 0x15),
             ("Transaction Processing Hints", 0x17), ("Latency Tolerance Reporting", 0x18),
             ("Secondary PCI Express", 0x19), ("Process Address Space ID", 0x1B),
             ("Downstream Port Containment", 0x1D), ("L1 PM Substates", 0x1E),
             ("Precision Time Measurement", 0x1F), ("Designated Vendor-Specific", 0x23),
             ("Data Link Feature", 0x25), ("Physical Layer 16.0 GT/s", 0x26), ("Lane Margining", 0x27)]
_LSPCI_CAP = re.compile(r"^\s*Capabilities: \[([0-9a-f]+)(?: v(\d+))?\] (.*)$")


def parse_lspci_capabilities(text: str) -> list[tuple[int | None, int, bool, int]]:
    """(id or None if unnamed, offset, extended, version) per ``Capabilities:`` line of one
    device's ``lspci -vv`` output, in lspci's order (the chain order)."""
    out: list[tuple[int | None, int, bool, int]] = []
    for line in text.splitlines():
        m = _LSPCI_CAP.match(line)
        if not m:
            continue
        off = int(m.group(1), 16)
        extended = off >= 0x100
        desc = m.group(3)
        table = LSPCI_EXT if extended else LSPCI_STD
        cid = next((i for n, i in table if desc.startswith(n)), None)
        out.append((cid, off, extended, int(m.group(2) or 0)))
    return out


ALL = [
    scenario_edu_info_and_regions,
    scenario_region_io_rules,
    scenario_edu_msi,
    scenario_edu_intx,
    scenario_set_irqs_validation,
    scenario_reset_and_features,
    scenario_config_capabilities,
    scenario_e1000e_regions,
]
