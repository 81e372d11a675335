"""QEMU's edu device (ids 1234:11e8): ident 0x010000ed, liveness inverse, factorial, a DMA engine
with a 4096-byte buffer at device address 0x40000, 28-bit DMA mask, interrupt raise/ack.
"""

from __future__ import annotations

import math
from typing import Any

from ..core import MockKernel
from .device import Bar, SimPciDevice


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


def make_edu(kernel: MockKernel, name: str = "0000:00:03.0", **kw: Any) -> Edu:
    """An :class:`Edu` for the default machine."""
    return Edu(name, kernel=kernel, **kw)
