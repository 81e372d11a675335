"""The PCI model of the mock's simulated devices: config space, BARs (memfds), interrupts, DMA.

A :class:`SimPciDevice` is what sits behind a vfio-pci device file (:mod:`.vfio_pci`); its DMA
goes through the VFIO group's ``dma_read``/``dma_write`` (the container's IOMMU), and a refused
access is logged to ``kernel.dmesg`` by the group and does not land.
"""

from __future__ import annotations

import mmap as _mmap
import os
import sys
from typing import Any

from ... import ioctls as I
from . import dmalog
from ...util.bdf import BDF_RX
from ..core import KernelError, MockKernel


PAGE = _mmap.PAGESIZE
OFFSET_SHIFT = 40
OFFSET_MASK = (1 << OFFSET_SHIFT) - 1
NUM_REGIONS = I.VFIO_PCI_NUM_REGIONS
NUM_IRQS = I.VFIO_PCI_NUM_IRQS
ROM = I.VFIO_PCI_ROM_REGION_INDEX
CONFIG = I.VFIO_PCI_CONFIG_REGION_INDEX
VGA = I.VFIO_PCI_VGA_REGION_INDEX
INTX, MSI, MSIX, ERR, REQ = (I.VFIO_PCI_INTX_IRQ_INDEX, I.VFIO_PCI_MSI_IRQ_INDEX,
                             I.VFIO_PCI_MSIX_IRQ_INDEX, I.VFIO_PCI_ERR_IRQ_INDEX,
                             I.VFIO_PCI_REQ_IRQ_INDEX)
CMD_IO, CMD_MEMORY, CMD_MASTER = 0x1, 0x2, 0x4
_ENDIAN = "little" if sys.byteorder == "little" else "big"


def _page_align(n: int) -> int:
    return -(-n // PAGE) * PAGE


class Bar:
    """A BAR: ``size`` bytes of memory (or I/O) space backed by a memfd."""

    def __init__(self, index: int, size: int, *, io: bool = False, is_64bit: bool = False,
                 prefetch: bool = False, mmap: bool = True, fill: int = 0) -> None:
        if size & (size - 1) or size < (4 if io else 16):
            raise ValueError(f"BAR size {size:#x} must be a power of two >= {'4' if io else '16'}")
        self.index = index
        self.size = size
        self.io = io
        self.is_64bit = is_64bit and not io
        self.prefetch = prefetch and not io
        # vfio-pci: memory BARs of at least a page (page-aligned) are mappable, I/O BARs never.
        self.mmap = mmap and not io and size >= PAGE
        self.fill = fill
        self.fd = os.memfd_create(f"pyvfio-mock-bar{index}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, _page_align(size))
        self.clear()

    def clear(self) -> None:
        os.pwrite(self.fd, bytes([self.fill]) * self.size, 0)

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def write(self, off: int, data: bytes) -> None:
        os.pwrite(self.fd, data, off)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SimPciDevice:
    """A PCI function with a real config space (header, capability lists), BARs and interrupts.

    Subclasses give behaviour by overriding :meth:`mmio_read` / :meth:`mmio_write` (BAR
    accesses through pread/pwrite) and :meth:`device_reset`.
    """

    vendor_id = 0xFFFF
    device_id = 0xFFFF
    class_code = 0x000000
    revision = 0
    subsystem_vendor_id = 0x1AF4  # QEMU's default subsystem (Red Hat, Inc. / QEMU)
    subsystem_id = 0x1100

    def __init__(self, name: str, *, pcie: bool = False, interrupt_pin: int = 1, interrupt_line: int = 0x0A,
                 reset: str | None = None, kernel: MockKernel | None = None) -> None:
        self.name = name
        self.kernel = kernel
        self.pcie = pcie
        self.cfg_size = 4096 if pcie else 256
        self.config = bytearray(self.cfg_size)
        self.wmask = bytearray(self.cfg_size)
        self.bars: list[Bar | None] = [None] * 6
        self.rom: bytes | None = None
        self.reset_method = reset
        self.sparse_msix = False
        self.group: Any = None
        self.open_count = 0
        self._std_caps: list[int] = []
        self._last_ext: int | None = None
        # interrupt state (vfio_pci_core_device: irq_type, ctx[], INTx masked)
        self.irq_type: int | None = None
        self.triggers: list[int | None] = []
        self.intx_masked = False
        self.intx_level = False
        self.msi_vectors = 0
        self.msix_vectors = 0
        self._header(interrupt_pin, interrupt_line)

    # -- config space construction ---------------------------------------------------------
    def _put(self, off: int, size: int, value: int, wmask: int = 0) -> None:
        self.config[off:off + size] = value.to_bytes(size, "little")
        self.wmask[off:off + size] = wmask.to_bytes(size, "little")

    def _get(self, off: int, size: int) -> int:
        return int.from_bytes(self.config[off:off + size], "little")

    def _header(self, pin: int, line: int) -> None:
        self._put(0x00, 2, self.vendor_id)
        self._put(0x02, 2, self.device_id)
        # firmware left I/O+ Mem+ SERR+ (what the x86 guest's lspci shows); writable: IO, MEMORY,
        # MASTER, PARITY, SERR, INTX_DISABLE
        self._put(0x04, 2, 0x0103, wmask=0x0547)
        self._put(0x06, 2, 0)
        self._put(0x08, 4, (self.class_code << 8) | self.revision)
        self._put(0x0C, 1, 0, wmask=0xFF)  # cache line size
        self._put(0x0D, 1, 0, wmask=0xFF)  # latency timer
        self._put(0x0E, 1, 0)  # header type 0
        self._put(0x2C, 2, self.subsystem_vendor_id)
        self._put(0x2E, 2, self.subsystem_id)
        self._put(0x3C, 1, line if pin else 0, wmask=0xFF)  # interrupt line (firmware's routing)
        self._put(0x3D, 1, pin)

    def add_bar(self, bar: Bar, address: int) -> Bar:
        """Install ``bar`` at its index with the given bus address (as firmware assigned it)."""
        i = bar.index
        self.bars[i] = bar
        off = 0x10 + 4 * i
        if bar.io:
            self._put(off, 4, (address & ~3) | 1, wmask=~(bar.size - 1) & 0xFFFFFFFC)
        else:
            flags = (4 if bar.is_64bit else 0) | (8 if bar.prefetch else 0)
            self._put(off, 4, (address & 0xFFFFFFF0) | flags, wmask=~(bar.size - 1) & 0xFFFFFFF0)
            if bar.is_64bit:
                self._put(off + 4, 4, address >> 32, wmask=0xFFFFFFFF)
        return bar

    def add_rom(self, size: int, address: int, content: bytes = b"\x55\xaa") -> None:
        """An expansion ROM of ``size`` bytes (disabled in the ROM BAR, as firmware leaves it);
        vfio-pci exposes it read-only as the ROM region."""
        self.rom = content + bytes(size - len(content))
        self._put(0x30, 4, address & 0xFFFFF800, wmask=(~(size - 1) & 0xFFFFF800) | 1)

    def add_cap(self, cap_id: int, offset: int, body: bytes, wmask: bytes | None = None) -> int:
        """Append a standard capability at ``offset`` (``body`` after the id/next bytes)."""
        if not 0x40 <= offset and offset + 2 + len(body) <= 0x100:
            raise ValueError(f"capability at {offset:#x} does not fit in the standard space")
        self.config[offset] = cap_id
        self.config[offset + 1] = 0
        self.config[offset + 2:offset + 2 + len(body)] = body
        if wmask:
            self.wmask[offset + 2:offset + 2 + len(wmask)] = wmask
        if self._std_caps:
            self.config[self._std_caps[-1] + 1] = offset
        else:
            self.config[0x34] = offset
            self._put(0x06, 2, self._get(0x06, 2) | 0x10)  # status: capability list
        self._std_caps.append(offset)
        return offset

    def add_ext_cap(self, cap_id: int, version: int, offset: int, body: bytes) -> int:
        """Append an extended capability at ``offset`` (>= 0x100, PCIe config space only)."""
        if not self.pcie or offset < 0x100 or offset + 4 + len(body) > self.cfg_size:
            raise ValueError(f"extended capability at {offset:#x} needs a PCIe config space")
        self._put(offset, 4, cap_id | (version << 16))
        self.config[offset + 4:offset + 4 + len(body)] = body
        if self._last_ext is not None:
            hdr = self._get(self._last_ext, 4)
            self._put(self._last_ext, 4, (hdr & 0xFFFFF) | (offset << 20))
        self._last_ext = offset
        return offset

    # -- config space access (vfio-pci's view) ---------------------------------------------
    @property
    def command(self) -> int:
        return self._get(0x04, 2)

    def cfg_read(self, off: int, size: int) -> bytes:
        return bytes(self.config[off:off + size])

    def cfg_write(self, off: int, data: bytes) -> None:
        for i, b in enumerate(data):
            m = self.wmask[off + i]
            self.config[off + i] = (self.config[off + i] & ~m & 0xFF) | (b & m)

    # -- BAR access -------------------------------------------------------------------------
    def mmio_read(self, bar: Bar, off: int, size: int) -> bytes:
        return bar.read(off, size)

    def mmio_write(self, bar: Bar, off: int, data: bytes) -> None:
        bar.write(off, data)

    def msix_table(self) -> tuple[int, int, int] | None:
        """(BAR index, table offset, table bytes) when the device has MSI-X."""
        for off in self._std_caps:
            if self.config[off] == 0x11:
                ctl = self._get(off + 2, 2)
                table = self._get(off + 4, 4)
                return table & 7, table & ~7, ((ctl & 0x7FF) + 1) * 16
        return None

    def sparse_areas(self, index: int) -> list[tuple[int, int]] | None:
        """With ``sparse_msix``: the (offset, size) areas of the MSI-X BAR that may be mapped,
        leaving out the pages of the MSI-X table and PBA; None for a BAR mapped whole."""
        bar = self.bars[index] if index < 6 else None
        t = self.msix_table()
        if not self.sparse_msix or bar is None or t is None or t[0] != index:
            return None
        holes = [(t[1] - t[1] % PAGE, _page_align(t[1] + t[2]))]
        for off in self._std_caps:
            if self.config[off] == 0x11:
                pba = self._get(off + 8, 4)
                if pba & 7 == index:
                    start = pba & ~7
                    holes.append((start - start % PAGE, _page_align(start + (t[2] // 16 + 63) // 64 * 8)))
        areas, cur = [], 0
        for lo, hi in sorted(holes):
            if lo > cur:
                areas.append((cur, lo - cur))
            cur = max(cur, hi)
        if cur < _page_align(bar.size):
            areas.append((cur, _page_align(bar.size) - cur))
        return areas

    def msi_cap_vectors(self) -> int:
        for off in self._std_caps:
            if self.config[off] == 0x05:
                return 1 << ((self._get(off + 2, 2) >> 1) & 7)
        return 0

    # -- lifecycle ----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.kernel is not None:
            self.kernel.log(msg)

    def enable(self, kernel: MockKernel, group: Any) -> None:
        """First open through vfio-pci: pci_enable_device (decoding on), remember the group."""
        self.kernel = kernel
        self.group = group
        if self.open_count == 0:
            want = CMD_MEMORY if any(b and not b.io for b in self.bars) else 0
            want |= CMD_IO if any(b and b.io for b in self.bars) else 0
            self._put(0x04, 2, self.command | want, wmask=0x0547)
        self.open_count += 1

    def disable(self) -> None:
        """Last close: interrupts off, bus mastering off, reset when possible (vfio_pci_core_disable)."""
        self.open_count -= 1
        if self.open_count > 0:
            return
        self.irq_disable()
        self._put(0x04, 2, self.command & ~CMD_MASTER, wmask=0x0547)
        if self.reset_method:
            self.function_reset()
        self.group = None

    def function_reset(self) -> None:
        """What pci_try_reset_function does: save config, reset the function, restore config."""
        saved = bytes(self.config)
        self.device_reset()
        self.config[:] = saved

    def device_reset(self) -> None:
        """The device's own state after a reset (override)."""

    def hot_reset_peers(self) -> list[tuple[int, int, int, int]] | None:
        """(group, segment, bus, devfn) of every function a slot/bus reset would hit, or None
        (no slot and a root bus: ENODEV). Devices on bus 0 of the mock sit on the root bus."""
        seg, bus, devfn = parse_bdf(self.name)
        if bus == 0:
            return None
        g = getattr(getattr(self.group, "iommu_group", None), "number", 0)
        return [(g, seg, bus, devfn)]

    # -- interrupts -----------------------------------------------------------------------
    def irq_count(self, index: int) -> int:
        """vfio_pci_get_irq_count."""
        if index == INTX:
            return 1 if self.config[0x3D] else 0
        if index == MSI:
            return self.msi_cap_vectors()
        if index == MSIX:
            t = self.msix_table()
            return t[2] // 16 if t else 0
        if index == ERR:
            return 1 if self.pcie else 0
        if index == REQ:
            return 1
        return 0

    def _signal(self, fd: int | None) -> None:
        if fd is not None:
            os.write(fd, (1).to_bytes(8, sys.byteorder))

    def irq_disable(self) -> None:
        for fd in self.triggers:
            if fd is not None:
                os.close(fd)
        self.triggers = []
        self.irq_type = None
        self.intx_masked = False

    def set_intx_level(self, level: bool) -> None:
        """The INTx line: asserting it while unmasked signals the eventfd and masks (automask)."""
        self.intx_level = level
        if level and self.irq_type == INTX and not self.intx_masked and self.triggers:
            self.intx_masked = True
            self._signal(self.triggers[0])

    def msi_notify(self, vector: int = 0) -> None:
        """An MSI/MSI-X message for ``vector`` (edge: one eventfd signal per message; like any
        device write it needs bus mastering, as QEMU and hardware do)."""
        if not self.bus_master():
            return  # an MSI is a memory write: dropped while bus mastering is off
        if self.irq_type in (MSI, MSIX) and vector < len(self.triggers):
            self._signal(self.triggers[vector])

    def msi_enabled(self) -> bool:
        return self.irq_type == MSI

    # -- DMA through the IOMMU ------------------------------------------------------------------
    def bus_master(self) -> bool:
        return bool(self.command & CMD_MASTER)

    def dma_read(self, iova: int, size: int) -> bytes | None:
        """Read guest memory at ``iova``; None when bus mastering is off or the IOMMU refuses."""
        if not self.bus_master():
            return None
        if self.group is None:
            self.log(f"DMAR: [DMA Read NO_PASID] Request device [{self.name}] fault addr {iova:#x} "
                     f"[fault reason 0x02] Present bit in context entry is clear")
            return None
        try:
            return bytes(self.group.dma_read(iova, size, device=self.name))
        except KernelError:
            return None  # the group logged the fault

    def dma_write(self, iova: int, data: bytes) -> bool:
        """Write guest memory at ``iova``; False when bus mastering is off or the IOMMU refuses."""
        if not self.bus_master():
            return False
        if self.group is None:
            self.log(f"DMAR: [DMA Write NO_PASID] Request device [{self.name}] fault addr {iova:#x} "
                     f"[fault reason 0x02] Present bit in context entry is clear")
            return False
        try:
            self.group.dma_write(iova, data, device=self.name)
        except KernelError:
            return False
        dmalog.device_dma_written(self, iova, len(data))  # the device's own DMA logger, if any
        return True

    def close(self) -> None:
        for b in self.bars:
            if b is not None:
                b.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.vendor_id:04x}:{self.device_id:04x}>"


def _le(v: int, n: int) -> bytes:
    return v.to_bytes(n, "little")


def parse_bdf(name: str) -> tuple[int, int, int]:
    """'0000:00:03.0' -> (segment, bus, devfn)."""
    m = BDF_RX.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a PCI address")
    seg, bus, dev, fn = m.groups()
    return int(seg or "0", 16), int(bus, 16), (int(dev, 16) << 3) | int(fn, 16)