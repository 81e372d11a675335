"""Simulated PCI devices and the vfio-pci device file of the mock kernel.

Follows drivers/vfio/pci/vfio_pci_core.c, vfio_pci_rdwr.c, vfio_pci_intrs.c and
vfio_pci_config.c (6.x) where user space can tell:

* ``VFIO_DEVICE_GET_INFO``: flags PCI (+RESET when the device has a reset method), 9 regions,
  5 interrupt indexes; EINVAL when argsz is below the fixed part.
* ``VFIO_DEVICE_GET_REGION_INFO``: region ``i`` at offset ``i << 40``; BARs READ|WRITE (+MMAP
  when mappable) with a MSIX_MAPPABLE capability on the MSI-X BAR, or a SPARSE_MMAP capability
  leaving out the MSI-X table when the device asks for the pre-4.16 behaviour; ROM read-only;
  CONFIG 256 or 4096 bytes; VGA gives EINVAL on a non-VGA device; capability chains grow argsz
  (flags CAPS, cap_offset 0) when they do not fit, as the kernel does.
* pread/pwrite: config accesses outside the config space give EFAULT; BAR accesses past the end
  EINVAL, straddling the end are short; memory BARs give EIO while memory decoding is off in the
  command register; the MSI-X table reads all-ones and drops writes (mmap sees the real table);
  writes to read-only config bits are dropped. BAR sizing works.
* mmap: MAP_SHARED only, BARs flagged MMAP only, inside the page-aligned BAR (EINVAL otherwise).
  BAR memory is a memfd, so mmap and pread/pwrite see the same bytes. Registers with side effects
  (edu's liveness, DMA doorbell, interrupt raise) act on pread/pwrite only: stores through a
  mapping cannot be trapped in process and just change the bytes.
* ``VFIO_DEVICE_SET_IRQS``: the validation of vfio_set_irqs_validate_and_prepare; INTx
  (automasked level interrupt, MASK/UNMASK, a still-asserted line fires again on unmask), MSI and
  MSI-X (one type at a time, EINVAL otherwise; MASK/UNMASK give ENOTTY), loopback triggers with
  DATA_NONE/DATA_BOOL, eventfds checked like eventfd_ctx_fdget (EBADF, EINVAL).
* ``VFIO_DEVICE_RESET`` (EINVAL without a reset method; config space is saved and restored around
  the device's own reset), ``VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`` (ENODEV on a root bus, ENOSPC
  with the count when the array does not fit), ``VFIO_DEVICE_FEATURE`` (PROBE; low-power entry
  and exit are SET-only, the rest ENOTTY).

Devices: :class:`Edu` (QEMU's edu: ids 1234:11e8, ident 0x010000ed, liveness inverse,
factorial, DMA engine with a 4096-byte buffer at device address 0x40000, 28-bit DMA mask,
interrupt raise/ack) and :class:`E1000e` (an e1000e-like NIC: PCIe config space with PM, MSI,
PCIe and MSI-X capabilities, AER and DSN extended capabilities, four BARs, no behaviour).
DMA goes through the VFIO group's ``dma_read``/``dma_write`` (the container's IOMMU); a refused
access is logged to ``kernel.dmesg`` by the group and does not land.
"""

from __future__ import annotations

import errno
import math
import mmap as _mmap
import os
import sys
from typing import Any, Callable

from .. import ioctls as I
from ..uapi import ffi, lib
from .core import KernelError, MockFile, MockKernel, handles

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
        from . import dirty

        dirty.device_dma_written(self, iova, len(data))  # the device's own DMA logger, if any
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
    seg, bus, rest = name.split(":")
    dev, fn = rest.split(".")
    return int(seg, 16), int(bus, 16), (int(dev, 16) << 3) | int(fn, 16)


# ---------------------------------------------------------------------------------------------
# QEMU's edu
# ---------------------------------------------------------------------------------------------

EDU_IDENT = 0x010000ED
EDU_DMA_START = 0x40000
EDU_DMA_SIZE = 4096
EDU_STATUS_COMPUTING = 0x01
EDU_STATUS_IRQFACT = 0x80
EDU_DMA_RUN = 0x1
EDU_DMA_DIR_TO_RAM = 0x2
EDU_DMA_IRQ = 0x4
EDU_FACT_IRQ = 0x1
EDU_DMA_IRQ_VALUE = 0x100


class Edu(SimPciDevice):
    """QEMU's edu device (docs/specs/edu.rst), register for register.

    ``byteorder="big"`` makes registers read byte-swapped, as edu does in a little-endian POWER
    guest (QEMU's DEVICE_NATIVE_ENDIAN on a big-endian target). ``strict_4096`` reproduces QEMU
    7.2's bounds check, where a transfer must end strictly before the buffer end (so at most
    4095 bytes); an out-of-bounds or empty transfer stops the device (QEMU aborts), logged.
    DMA is synchronous: the command register's RUN bit is clear again when the write returns.
    """

    vendor_id = 0x1234
    device_id = 0x11E8
    class_code = 0x00FF00
    revision = 0x10

    def __init__(self, name: str = "0000:00:03.0", *, kernel: MockKernel | None = None,
                 byteorder: str = "little", dma_mask: int = (1 << 28) - 1, strict_4096: bool = True,
                 bar_address: int = 0xFEA00000) -> None:
        super().__init__(name, pcie=False, interrupt_pin=1, reset=None, kernel=kernel)
        self.byteorder = byteorder
        self.dma_mask = dma_mask
        self.strict_4096 = strict_4096
        self.bar0 = self.add_bar(Bar(0, 1 << 20, fill=0xFF), bar_address)
        # msi_init(pdev, 0, 1, true, false): 64-bit, one vector, no per-vector mask
        self.add_cap(0x05, 0x40, bytes([0x80, 0x00]) + bytes(12),
                     wmask=bytes([0x71, 0x00]) + b"\xfc\xff\xff\xff" + b"\xff" * 4 + b"\xff\xff")
        self.dead = False
        self.device_reset()

    # registers, kept mirrored in the BAR's memfd so mmap readers see them
    def device_reset(self) -> None:
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_cnt = self.dma_cmd = 0
        self.dma_buf = bytearray(EDU_DMA_SIZE)
        self.bar0.clear()
        self._sync()

    def _sync(self) -> None:
        bo = self.byteorder
        regs = {0x00: (EDU_IDENT, 4), 0x04: (self.addr4, 4), 0x08: (self.fact, 4),
                0x20: (self.status, 4), 0x24: (self.irq_status, 4), 0x80: (self.dma_src, 8),
                0x88: (self.dma_dst, 8), 0x90: (self.dma_cnt, 8), 0x98: (self.dma_cmd, 8)}
        for off, (val, size) in regs.items():
            self.bar0.write(off, (val & ((1 << (8 * size)) - 1)).to_bytes(size, bo))  # type: ignore[arg-type]

    def mmio_read(self, bar: Bar, off: int, size: int) -> bytes:
        # vfio-pci splits accesses into naturally aligned 8/4/2/1-byte pieces
        out = b""
        while size:
            n = 8 if size >= 8 and off % 8 == 0 else 4 if size >= 4 and off % 4 == 0 else \
                2 if size >= 2 and off % 2 == 0 else 1
            out += self._reg_read(off, n).to_bytes(n, self.byteorder)  # type: ignore[arg-type]
            off += n
            size -= n
        return out

    def mmio_write(self, bar: Bar, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            size = len(data) - pos
            n = 8 if size >= 8 and off % 8 == 0 else 4 if size >= 4 and off % 4 == 0 else \
                2 if size >= 2 and off % 2 == 0 else 1
            self._reg_write(off, int.from_bytes(data[pos:pos + n], self.byteorder), n)  # type: ignore[arg-type]
            off += n
            pos += n
        self._sync()

    def _reg_read(self, addr: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        if self.dead:
            return ones
        if addr < 0x80 and size != 4:
            return ones
        if addr >= 0x80 and size not in (4, 8):
            return ones
        val = {0x00: EDU_IDENT, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
               0x24: self.irq_status, 0x80: self.dma_src, 0x88: self.dma_dst, 0x90: self.dma_cnt,
               0x98: self.dma_cmd}.get(addr)
        return ones if val is None else val & ones

    def _reg_write(self, addr: int, val: int, size: int) -> None:
        if self.dead:
            return
        if addr < 0x80 and size != 4:
            return
        if addr >= 0x80 and size not in (4, 8):
            return
        if addr == 0x04:
            self.addr4 = ~val & 0xFFFFFFFF
        elif addr == 0x08:
            if not self.status & EDU_STATUS_COMPUTING:
                self.fact = math.factorial(val) & 0xFFFFFFFF if val < 64 else 0
                if self.status & EDU_STATUS_IRQFACT:
                    self.raise_irq(EDU_FACT_IRQ)
        elif addr == 0x20:
            self.status = (self.status & ~EDU_STATUS_IRQFACT) | (val & EDU_STATUS_IRQFACT)
        elif addr == 0x60:
            self.raise_irq(val)
        elif addr == 0x64:
            self.lower_irq(val)
        elif addr == 0x80:
            self.dma_src = val
        elif addr == 0x88:
            self.dma_dst = val
        elif addr == 0x90:
            self.dma_cnt = val
        elif addr == 0x98:
            if not self.dma_cmd & EDU_DMA_RUN:
                self.dma_cmd = val
                if val & EDU_DMA_RUN:
                    self._dma()

    def raise_irq(self, val: int) -> None:
        self.irq_status |= val
        if self.irq_status:
            if self.msi_enabled():
                self.msi_notify(0)
            else:
                self.set_intx_level(True)

    def lower_irq(self, val: int) -> None:
        self.irq_status &= ~val
        if not self.irq_status and not self.msi_enabled():
            self.set_intx_level(False)

    def _check_range(self, addr: int, cnt: int) -> bool:
        end1, end2 = addr + cnt, EDU_DMA_START + EDU_DMA_SIZE
        ok = EDU_DMA_START <= addr < end2 and end1 > addr and (
            end1 < end2 if self.strict_4096 else end1 <= end2)
        if not ok:
            self.log(f"EDU: DMA range {addr:#018x}-{end1 - 1:#018x} out of bounds "
                     f"({EDU_DMA_START:#010x}-{end2 - 1:#010x})! (device stopped)")
            self.dead = True
        return ok

    def _clamp(self, addr: int) -> int:
        res = addr & self.dma_mask
        if res != addr:
            self.log(f"EDU: clamping DMA {addr:#018x} to {res:#018x}!")
        return res

    def _dma(self) -> None:
        cnt = self.dma_cnt
        if self.dma_cmd & EDU_DMA_DIR_TO_RAM:
            if not self._check_range(self.dma_src, cnt):
                return
            src = self.dma_src - EDU_DMA_START
            self.dma_write(self._clamp(self.dma_dst), bytes(self.dma_buf[src:src + cnt]))
        else:
            if not self._check_range(self.dma_dst, cnt):
                return
            dst = self.dma_dst - EDU_DMA_START
            data = self.dma_read(self._clamp(self.dma_src), cnt)
            if data is not None:
                self.dma_buf[dst:dst + cnt] = data
        self.dma_cmd &= ~EDU_DMA_RUN
        if self.dma_cmd & EDU_DMA_IRQ:
            self.raise_irq(EDU_DMA_IRQ_VALUE)


# ---------------------------------------------------------------------------------------------
# an e1000e-like NIC: config space and BARs only
# ---------------------------------------------------------------------------------------------


class E1000e(SimPciDevice):
    """Config space and BARs of QEMU's e1000e (8086:10d3): PM at 0xc8, MSI at 0xd0, PCIe v1
    endpoint at 0xe0, MSI-X (5 vectors, table and PBA in BAR3) at 0xa0; AER at 0x100, DSN at
    0x140; BAR0 128 KiB MMIO, BAR1 128 KiB flash, BAR2 32-byte I/O, BAR3 16 KiB MSI-X, a 256 KiB
    expansion ROM; laid out as the x86 guest's firmware leaves it (same addresses).
    ``sparse_msix=True`` reports BAR3 with a SPARSE_MMAP capability leaving out the table and PBA
    pages (as kernels before 4.16 left out the table) instead of MSIX_MAPPABLE. Reset by PM (D3hot and back)."""

    vendor_id = 0x8086
    device_id = 0x10D3
    class_code = 0x020000
    revision = 0
    subsystem_vendor_id = 0x8086
    subsystem_id = 0x0000

    def __init__(self, name: str = "0000:00:02.0", *, kernel: MockKernel | None = None,
                 sparse_msix: bool = False) -> None:
        super().__init__(name, pcie=True, interrupt_pin=1, interrupt_line=0x0B, reset="pm", kernel=kernel)
        self.sparse_msix = sparse_msix
        # the addresses the x86 guest's firmware assigns
        self.add_bar(Bar(0, 128 << 10), 0xFEB40000)
        self.add_bar(Bar(1, 128 << 10), 0xFEB60000)
        self.add_bar(Bar(2, 32, io=True), 0xC0C0)
        self.add_bar(Bar(3, 16 << 10), 0xFEB80000)
        self.add_rom(256 << 10, 0xFEB00000)
        # PM version 2 with DSI (PMC 0x0022); PMCSR power state writable, NoSoftRst- (PM reset)
        self.add_cap(0x01, 0xC8, _le(0x0022, 2) + bytes(4), wmask=bytes(2) + b"\x03\x81")
        # MSI: 64-bit, one vector
        self.add_cap(0x05, 0xD0, bytes([0x80, 0x00]) + bytes(12),
                     wmask=bytes([0x71, 0x00]) + b"\xfc\xff\xff\xff" + b"\xff" * 4 + b"\xff\xff")
        # PCIe v1 root complex integrated endpoint (PCI_EXP_VER1_SIZEOF 0x14): caps 0x0091,
        # devcap RBE+, devctl (writable), devsta, lnkcap, lnkctl, lnksta
        pcie = (_le(0x0091, 2) + _le(0x00008000, 4) + _le(0, 2) + _le(0, 2)
                + _le(0x00000411, 4) + _le(0, 2) + _le(0x0011, 2))
        self.add_cap(0x10, 0xE0, pcie, wmask=bytes(6) + b"\xff\xff")
        # MSI-X: 5 vectors, table BAR3 + 0, PBA BAR3 + 0x2000; enable/function mask writable
        self.add_cap(0x11, 0xA0, _le(4, 2) + _le(0x0 | 3, 4) + _le(0x2000 | 3, 4), wmask=b"\x00\xc0")
        self.add_ext_cap(0x01, 2, 0x100, bytes(0x40 - 4))  # AER
        self.add_ext_cap(0x03, 1, 0x140, (0x0000_5254_00_12_34_56).to_bytes(8, "little"))  # DSN
        self.device_reset()

    def device_reset(self) -> None:
        for b in self.bars:
            if b is not None:
                b.clear()
        # MSI-X table entries start masked (vector control bit 0)
        for v in range(5):
            self.bars[3].write(v * 16 + 12, (1).to_bytes(4, "little"))  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# the vfio-pci device file
# ---------------------------------------------------------------------------------------------


def _cap_chain(caps: list[tuple[int, int, bytes]], base: int) -> bytes:
    """Serialize (id, version, payload) capabilities into a chain whose offsets start at ``base``."""
    out = bytearray()
    for k, (cid, ver, payload) in enumerate(caps):
        here = base + len(out)
        size = 8 + len(payload)
        size += -size % 8
        nxt = here + size if k + 1 < len(caps) else 0
        out += cid.to_bytes(2, _ENDIAN) + ver.to_bytes(2, _ENDIAN) + nxt.to_bytes(4, _ENDIAN)  # type: ignore[arg-type]
        out += payload + bytes(size - 8 - len(payload))
    return bytes(out)


def _u32(v: int) -> bytes:
    return v.to_bytes(4, _ENDIAN)  # type: ignore[arg-type]


def _u64(v: int) -> bytes:
    return v.to_bytes(8, _ENDIAN)  # type: ignore[arg-type]


def _eventfd_dup(fd: int) -> int:
    """eventfd_ctx_fdget: EBADF for a closed fd, EINVAL for a non-eventfd; a kernel reference."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        raise KernelError(errno.EBADF, f"vfio-pci: fd {fd} is not open") from None
    if target != "anon_inode:[eventfd]":
        raise KernelError(errno.EINVAL, f"vfio-pci: fd {fd} is not an eventfd ({target})")
    return os.dup(fd)


class VfioPciDeviceFile(MockFile):
    """The file behind a vfio-pci device fd."""

    def __init__(self, kernel: MockKernel, sim: SimPciDevice, group: Any, *, owns_device: bool = False) -> None:
        super().__init__(kernel, f"vfio-device:{sim.name}")
        self.sim = sim
        self.group = group
        self.owns_device = owns_device
        sim.enable(kernel, group)

    def release(self) -> None:
        self.sim.disable()
        if self.owns_device:  # a standalone device goes away with its only file
            self.sim.close()

    # -- info ------------------------------------------------------------------------------
    @handles("VFIO_DEVICE_GET_INFO")
    def get_info(self, arg: Any) -> int:
        info = ffi.cast("struct vfio_device_info *", arg)
        minsz = ffi.offsetof("struct vfio_device_info", "num_irqs") + 4
        if info.argsz < minsz:
            raise KernelError(errno.EINVAL, "vfio-pci: GET_INFO argsz too small")
        info.flags = I.VFIO_DEVICE_FLAGS_PCI | (I.VFIO_DEVICE_FLAGS_RESET if self.sim.reset_method else 0)
        info.num_regions = NUM_REGIONS
        info.num_irqs = NUM_IRQS
        if info.argsz >= ffi.sizeof("struct vfio_device_info"):
            info.cap_offset = 0
        return 0

    def _region(self, index: int) -> tuple[int, int, list[tuple[int, int, bytes]]]:
        """(flags, size, caps) of region ``index``; EINVAL for VGA/unknown."""
        R, W, M = I.VFIO_REGION_INFO_FLAG_READ, I.VFIO_REGION_INFO_FLAG_WRITE, I.VFIO_REGION_INFO_FLAG_MMAP
        sim = self.sim
        if index < 6:
            bar = sim.bars[index]
            if bar is None:
                return 0, 0, []
            flags = R | W | (M if bar.mmap else 0)
            caps: list[tuple[int, int, bytes]] = []
            t = sim.msix_table()
            if bar.mmap and t and t[0] == index:
                areas = sim.sparse_areas(index)
                if areas is not None:
                    payload = _u32(len(areas)) + _u32(0) + b"".join(_u64(o) + _u64(s) for o, s in areas)
                    caps.append((I.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, payload))
                else:
                    caps.append((I.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, b""))
            return flags, bar.size, caps
        if index == ROM:
            return (R, len(sim.rom), []) if sim.rom else (0, 0, [])
        if index == CONFIG:
            return R | W, sim.cfg_size, []
        raise KernelError(errno.EINVAL, f"vfio-pci: no region {index} (not a VGA device)")

    @handles("VFIO_DEVICE_GET_REGION_INFO")
    def get_region_info(self, arg: Any) -> int:
        ri = ffi.cast("struct vfio_region_info *", arg)
        fixed = ffi.sizeof("struct vfio_region_info")
        if ri.argsz < fixed:
            raise KernelError(errno.EINVAL, "vfio-pci: GET_REGION_INFO argsz too small")
        if ri.index >= NUM_REGIONS:
            raise KernelError(errno.EINVAL, f"vfio-pci: region index {ri.index} out of range")
        flags, size, caps = self._region(int(ri.index))
        ri.offset = int(ri.index) << OFFSET_SHIFT
        ri.size = size
        ri.cap_offset = 0
        if caps:
            chain = _cap_chain(caps, fixed)
            flags |= I.VFIO_REGION_INFO_FLAG_CAPS
            if ri.argsz < fixed + len(chain):
                ri.argsz = fixed + len(chain)
            else:
                ffi.memmove(ffi.cast("char *", arg) + fixed, chain, len(chain))
                ri.cap_offset = fixed
        ri.flags = flags
        return 0

    @handles("VFIO_DEVICE_GET_IRQ_INFO")
    def get_irq_info(self, arg: Any) -> int:
        ii = ffi.cast("struct vfio_irq_info *", arg)
        if ii.argsz < ffi.sizeof("struct vfio_irq_info"):
            raise KernelError(errno.EINVAL, "vfio-pci: GET_IRQ_INFO argsz too small")
        index = int(ii.index)
        if index >= NUM_IRQS or (index == ERR and not self.sim.pcie):
            raise KernelError(errno.EINVAL, f"vfio-pci: no interrupt index {index}")
        flags = I.VFIO_IRQ_INFO_EVENTFD
        if index == INTX:
            flags |= I.VFIO_IRQ_INFO_MASKABLE | I.VFIO_IRQ_INFO_AUTOMASKED
        elif index != MSIX or self.sim.msix_table() is None:
            flags |= I.VFIO_IRQ_INFO_NORESIZE  # dynamic MSI-X needs an MSI-X capability
        ii.flags = flags
        ii.count = self.sim.irq_count(index)
        return 0

    # -- interrupts -------------------------------------------------------------------------
    @handles("VFIO_DEVICE_SET_IRQS")
    def set_irqs(self, arg: Any) -> int:
        hdr = ffi.cast("struct vfio_irq_set *", arg)
        minsz = ffi.sizeof("struct vfio_irq_set")
        flags, index, start, count = int(hdr.flags), int(hdr.index), int(hdr.start), int(hdr.count)
        allowed = I.VFIO_IRQ_SET_DATA_TYPE_MASK | I.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if hdr.argsz < minsz or index >= NUM_IRQS or count >= 0xFFFFFFFF - start or flags & ~allowed:
            raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS header invalid")
        max_irqs = self.sim.irq_count(index)
        if (start >= max_irqs and count) or start + count > max_irqs:
            raise KernelError(errno.EINVAL, f"vfio-pci: SET_IRQS range {start}+{count} > {max_irqs}")
        dtype = flags & I.VFIO_IRQ_SET_DATA_TYPE_MASK
        size = {I.VFIO_IRQ_SET_DATA_NONE: 0, I.VFIO_IRQ_SET_DATA_BOOL: 1,
                I.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(dtype)
        if size is None:
            raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS needs exactly one DATA_ type")
        data = b""
        if size:
            if hdr.argsz - minsz < count * size:
                raise KernelError(errno.EINVAL, "vfio-pci: SET_IRQS data shorter than count")
            data = bytes(ffi.buffer(hdr.data, count * size))
        action = flags & I.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if index == INTX:
            fn = {I.VFIO_IRQ_SET_ACTION_MASK: self._intx_mask, I.VFIO_IRQ_SET_ACTION_UNMASK: self._intx_unmask,
                  I.VFIO_IRQ_SET_ACTION_TRIGGER: self._intx_trigger}.get(action)
        elif index in (MSI, MSIX):
            fn = self._msi_trigger if action == I.VFIO_IRQ_SET_ACTION_TRIGGER else None
        else:  # ERR (PCIe) and REQ: trigger only; the mock never raises them
            fn = self._other_trigger if action == I.VFIO_IRQ_SET_ACTION_TRIGGER else None
        if fn is None:
            raise KernelError(errno.ENOTTY, f"vfio-pci: SET_IRQS action {action:#x} unsupported on index {index}")
        fn(index, dtype, start, count, data)
        return 0

    def _fds(self, data: bytes, count: int) -> list[int]:
        return [int.from_bytes(data[4 * i:4 * i + 4], _ENDIAN, signed=True) for i in range(count)]  # type: ignore[arg-type]

    def _intx_mask(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type != INTX or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx mask without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx mask by eventfd not implemented")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            sim.intx_masked = True

    def _intx_unmask(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type != INTX or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx unmask without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            raise KernelError(errno.EINVAL, "vfio-pci: unmask eventfds (irqfd resampling) are not simulated")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            if sim.intx_masked:
                sim.intx_masked = False
                if sim.intx_level:  # still asserted: fires again, masked again
                    sim.set_intx_level(True)

    def _intx_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type == INTX and count == 0 and dtype == I.VFIO_IRQ_SET_DATA_NONE:
            sim.irq_disable()
            return
        if sim.irq_type not in (INTX, None) or start != 0 or count != 1:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx trigger: another type enabled or bad range")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            fd = self._fds(data, 1)[0]
            new = _eventfd_dup(fd) if fd >= 0 else None
            if sim.irq_type == INTX:
                old = sim.triggers[0] if sim.triggers else None
                sim.triggers = [new]
                if old is not None:
                    os.close(old)
            else:
                sim.irq_type = INTX
                sim.triggers = [new]
                sim.intx_masked = False
                if sim.intx_level:
                    sim.set_intx_level(True)
            return
        if sim.irq_type != INTX:
            raise KernelError(errno.EINVAL, "vfio-pci: INTx loopback trigger without INTx enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_NONE or data[0]:
            sim._signal(sim.triggers[0] if sim.triggers else None)

    def _msi_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        sim = self.sim
        if sim.irq_type == index and count == 0 and dtype == I.VFIO_IRQ_SET_DATA_NONE:
            sim.irq_disable()
            return
        if sim.irq_type not in (index, None):
            raise KernelError(errno.EINVAL, "vfio-pci: MSI/MSI-X trigger while another type is enabled")
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = self._fds(data, count)
            news: list[int | None] = []
            try:
                for fd in fds:
                    news.append(_eventfd_dup(fd) if fd >= 0 else None)
            except KernelError:
                for n in news:
                    if n is not None:
                        os.close(n)
                raise
            if sim.irq_type != index:
                if count == 0:
                    raise KernelError(errno.EINVAL, "vfio-pci: enabling MSI needs at least one vector")
                sim.irq_type = index
                sim.triggers = [None] * (start + count)
            elif start + count > len(sim.triggers):
                if index == MSI:
                    for n in news:
                        if n is not None:
                            os.close(n)
                    raise KernelError(errno.EINVAL, "vfio-pci: MSI vectors cannot grow once enabled")
                sim.triggers += [None] * (start + count - len(sim.triggers))
            for k, n in enumerate(news):
                old = sim.triggers[start + k]
                sim.triggers[start + k] = n
                if old is not None:
                    os.close(old)
            return
        if sim.irq_type != index:
            raise KernelError(errno.EINVAL, "vfio-pci: MSI loopback trigger without MSI enabled")
        for k in range(count):
            v = start + k
            if v < len(sim.triggers) and (dtype == I.VFIO_IRQ_SET_DATA_NONE or data[k]):
                sim._signal(sim.triggers[v])

    def _other_trigger(self, index: int, dtype: int, start: int, count: int, data: bytes) -> None:
        # ERR/REQ: registering or clearing the one eventfd is accepted; nothing ever fires
        if dtype == I.VFIO_IRQ_SET_DATA_EVENTFD:
            for fd in self._fds(data, count):
                if fd >= 0:
                    os.close(_eventfd_dup(fd))

    # -- reset, hot reset, features ---------------------------------------------------------
    @handles("VFIO_DEVICE_RESET")
    def reset(self, arg: Any) -> int:
        if not self.sim.reset_method:
            raise KernelError(errno.EINVAL, f"vfio-pci {self.sim.name}: no reset method")
        self.sim.function_reset()
        return 0

    @handles("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")
    def hot_reset_info(self, arg: Any) -> int:
        h = ffi.cast("struct vfio_pci_hot_reset_info *", arg)
        hdr = ffi.sizeof("struct vfio_pci_hot_reset_info")
        if h.argsz < hdr:
            raise KernelError(errno.EINVAL, "vfio-pci: HOT_RESET_INFO argsz too small")
        h.flags = 0
        peers = self.sim.hot_reset_peers()
        if peers is None:
            raise KernelError(errno.ENODEV, f"vfio-pci {self.sim.name}: no slot or bus reset (root bus)")
        dep = ffi.sizeof("struct vfio_pci_dependent_device")
        if h.argsz < hdr + len(peers) * dep:
            h.count = len(peers)
            raise KernelError(errno.ENOSPC, "vfio-pci: HOT_RESET_INFO array too small")
        h.count = len(peers)
        for i, (g, seg, bus, devfn) in enumerate(peers):
            d = h.devices[i]
            d.group_id, d.segment, d.bus, d.devfn = g, seg, bus, devfn
        return 0

    @handles("VFIO_DEVICE_FEATURE")
    def feature(self, arg: Any) -> int:
        f = ffi.cast("struct vfio_device_feature *", arg)
        if f.argsz < ffi.sizeof("struct vfio_device_feature"):
            raise KernelError(errno.EINVAL, "vfio: FEATURE argsz too small")
        flags = int(f.flags)
        G, S, P = I.VFIO_DEVICE_FEATURE_GET, I.VFIO_DEVICE_FEATURE_SET, I.VFIO_DEVICE_FEATURE_PROBE
        if flags & ~(I.VFIO_DEVICE_FEATURE_MASK | G | S | P):
            raise KernelError(errno.EINVAL, "vfio: FEATURE unknown flags")
        if not flags & P and flags & G and flags & S:
            raise KernelError(errno.EINVAL, "vfio: FEATURE GET and SET together without PROBE")
        feat = flags & I.VFIO_DEVICE_FEATURE_MASK
        if I.VFIO_DEVICE_FEATURE_DMA_LOGGING_START <= feat <= I.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
            from . import dirty  # DMA_LOGGING_START/STOP/REPORT: ENOTTY unless the device logs

            return dirty.device_feature(self.sim, arg)
        supported = {I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY: S,
                     I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP: S,
                     I.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT: S}.get(feat)
        if supported is None:
            raise KernelError(errno.ENOTTY, f"vfio-pci: feature {feat} not supported")
        if flags & (G | S) & ~supported:
            raise KernelError(errno.EINVAL, f"vfio-pci: feature {feat} does not support that operation")
        if flags & P:
            return 0
        raise KernelError(errno.EINVAL, "vfio-pci mock: low-power transitions are not simulated")

    # -- region I/O -------------------------------------------------------------------------
    def _split(self, offset: int) -> tuple[int, int]:
        return offset >> OFFSET_SHIFT, offset & OFFSET_MASK

    def _bar_access(self, index: int, pos: int, count: int) -> tuple[Bar, int]:
        sim = self.sim
        if index >= NUM_REGIONS:
            raise KernelError(errno.EINVAL, f"vfio-pci: no region {index}")
        if index in (ROM, VGA) or index > CONFIG:
            raise KernelError(errno.EINVAL, f"vfio-pci: region {index} not present")
        bar = sim.bars[index]
        if bar is None:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} not implemented")
        if pos >= bar.size:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} offset {pos:#x} past the end")
        if not bar.io and not sim.command & CMD_MEMORY:
            raise KernelError(errno.EIO, f"vfio-pci: BAR{index} access with memory decoding disabled")
        return bar, min(count, bar.size - pos)

    def _config_range(self, pos: int, count: int) -> None:
        if pos >= self.sim.cfg_size or pos + count > self.sim.cfg_size:
            raise KernelError(errno.EFAULT, f"vfio-pci: config access {pos:#x}+{count} outside config space")

    def pread(self, size: int, offset: int) -> bytes:
        index, pos = self._split(offset)
        if index == ROM and self.sim.rom:
            if pos >= len(self.sim.rom):
                raise KernelError(errno.EINVAL, f"vfio-pci: ROM offset {pos:#x} past the end")
            return self.sim.rom[pos:pos + size]
        if index == CONFIG:
            self._config_range(pos, size)
            return self.sim.cfg_read(pos, size)
        bar, n = self._bar_access(index, pos, size)
        lo, hi = self._msix_window(index)
        out = b""
        for a, b, hidden in self._pieces(pos, pos + n, lo, hi):
            out += b"\xff" * (b - a) if hidden else self.sim.mmio_read(bar, a, b - a)
        return out

    def pwrite(self, data: bytes, offset: int) -> int:
        index, pos = self._split(offset)
        if index == CONFIG:
            self._config_range(pos, len(data))
            self.sim.cfg_write(pos, data)
            return len(data)
        bar, n = self._bar_access(index, pos, len(data))
        lo, hi = self._msix_window(index)
        for a, b, hidden in self._pieces(pos, pos + n, lo, hi):
            if not hidden:
                self.sim.mmio_write(bar, a, data[a - pos:b - pos])
        return n

    def _msix_window(self, index: int) -> tuple[int, int]:
        """vfio-pci's view of the MSI-X table through read/write: reads give all-ones and
        writes are dropped (the table is the kernel's); mmap sees the real table."""
        t = self.sim.msix_table()
        if t is None or t[0] != index:
            return 0, 0
        return t[1], t[1] + t[2]

    @staticmethod
    def _pieces(start: int, end: int, lo: int, hi: int) -> list[tuple[int, int, bool]]:
        cuts = sorted({start, end, *(c for c in (lo, hi) if start < c < end)})
        return [(a, b, lo <= a < hi) for a, b in zip(cuts, cuts[1:])]

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        index, pos = self._split(offset)
        if index >= NUM_REGIONS or length <= 0:
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap of region {index}")
        if not flags & _mmap.MAP_SHARED:
            raise KernelError(errno.EINVAL, "vfio-pci: mmap needs MAP_SHARED")
        if index >= ROM:
            raise KernelError(errno.EINVAL, f"vfio-pci: region {index} cannot be mmapped")
        bar = self.sim.bars[index]
        if bar is None or not bar.mmap:
            raise KernelError(errno.EINVAL, f"vfio-pci: BAR{index} is not mmap-able")
        if pos % PAGE or pos + length > _page_align(bar.size):
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap [{pos:#x}, {pos + length:#x}) outside BAR{index}")
        areas = self.sim.sparse_areas(index)
        if areas is not None and not any(o <= pos and pos + length <= o + n for o, n in areas):
            raise KernelError(errno.EINVAL, f"vfio-pci: mmap [{pos:#x}, {pos + length:#x}) of BAR{index} "
                                            f"is not inside a sparse mmap area")
        p = lib.mmap(ffi.NULL, length, prot, flags, bar.fd, pos)
        addr = int(ffi.cast("uintptr_t", p))
        if addr == (1 << 64) - 1:
            raise KernelError(ffi.errno, f"vfio-pci mock: mmap of the BAR{index} memfd failed")
        return addr


def open_device_file(kernel: MockKernel, group_state: Any, sim_device: SimPciDevice, *,
                     owns_device: bool = False) -> MockFile:
    """The MockFile answering VFIO_DEVICE_* for ``sim_device`` (VFIO_GROUP_GET_DEVICE_FD).

    ``group_state`` provides ``dma_read(iova, size, device=)``/``dma_write(iova, data, device=)``
    through the container's IOMMU (raising KernelError, already logged, on a fault); None means
    no IOMMU domain (every DMA faults). ``owns_device``: releasing the file powers the simulated
    device off (its BAR memfds are closed).
    """
    return VfioPciDeviceFile(kernel, sim_device, group_state, owns_device=owns_device)


def make_edu(kernel: MockKernel, name: str = "0000:00:03.0", **kw: Any) -> Edu:
    """An :class:`Edu` for the default machine."""
    return Edu(name, kernel=kernel, **kw)


def make_e1000e(kernel: MockKernel, name: str = "0000:00:02.0", **kw: Any) -> E1000e:
    """An :class:`E1000e` for the default machine."""
    return E1000e(name, kernel=kernel, **kw)


DEVICE_KINDS: dict[str, Callable[..., SimPciDevice]] = {"edu": make_edu, "e1000e": make_e1000e}


def standalone_device(kind: str = "edu", *, backend: Any = None, **kw: Any) -> Any:
    """A :class:`pyvfio.vfio.device.Device` on a bare mock kernel with one simulated device and
    no IOMMU (DMA faults): for examples and unit tests of the device layer alone.

    ``backend``: a MockBackend to use (default: a new one on a kernel without subsystems).
    """
    from ..seam.mock import MockBackend
    from ..vfio.device import Device

    be = backend if backend is not None else MockBackend(MockKernel(subsystems=[]))
    sim = DEVICE_KINDS[kind](be.kernel, **kw)
    fd = be.kernel.install(open_device_file(be.kernel, None, sim, owns_device=True))
    be.label(fd, f"vfio-device:{sim.name}")
    return Device(fd, name=sim.name, backend=be)


__all__ = ["SimPciDevice", "Bar", "Edu", "E1000e", "VfioPciDeviceFile", "open_device_file",
           "make_edu", "make_e1000e", "standalone_device", "parse_bdf", "EDU_IDENT", "EDU_DMA_START",
           "EDU_DMA_SIZE"]
