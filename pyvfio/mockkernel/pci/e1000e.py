"""An e1000e-like NIC (8086:10d3): PCIe config space with PM, MSI, PCIe and MSI-X capabilities,
AER and DSN extended capabilities, four BARs, no behaviour.
"""

from __future__ import annotations

from typing import Any

from ..core import MockKernel
from .device import Bar, SimPciDevice, _le


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


def make_e1000e(kernel: MockKernel, name: str = "0000:00:02.0", **kw: Any) -> E1000e:
    """An :class:`E1000e` for the default machine."""
    return E1000e(name, kernel=kernel, **kw)
