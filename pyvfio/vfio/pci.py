"""PCI config space through vfio-pci's CONFIG region: header fields, command register, bus
mastering, standard and extended capability walks, BAR descriptions.

Config space is little-endian whatever the CPU (vfio-pci converts), so every field here is
decoded little-endian. vfio-pci virtualizes parts of it (BARs, parts of the command register,
MSI/MSI-X control) and hides capabilities it does not know; what is read here is what the
user of the device fd sees.

Example (runs on the mock)::

    >>> from pyvfio.testing import standalone_device
    >>> dev = standalone_device("edu")
    >>> [(c.name, hex(c.offset)) for c in dev.config.capabilities()]
    [('MSI', '0x40')]
    >>> dev.close()
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ArgumentError, RangeError
from ..uapi.names import NameTable
from ..util.hexrepr import hex_repr
from .device_info import PciRegion

if TYPE_CHECKING:  # pragma: no cover
    from .device import Device

CONFIG = PciRegion.CONFIG
PCI_STD_HEADER_SIZEOF = 0x40
PCI_CFG_SPACE_SIZE = 0x100
PCI_CFG_SPACE_EXP_SIZE = 0x1000
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_BASE_ADDRESS_0 = 0x10
PCI_ROM_ADDRESS = 0x30


class PciCommand(enum.IntFlag):
    """The command register (PCI_COMMAND) bits."""

    IO = 0x1
    MEMORY = 0x2
    MASTER = 0x4
    SPECIAL = 0x8
    INVALIDATE = 0x10
    VGA_PALETTE = 0x20
    PARITY = 0x40
    WAIT = 0x80
    SERR = 0x100
    FAST_BACK = 0x200
    INTX_DISABLE = 0x400


#: Standard capability IDs (PCI_CAP_ID_*) -> name.
CAP_NAMES: dict[int, str] = {
    0x01: "PM", 0x02: "AGP", 0x03: "VPD", 0x04: "SLOTID", 0x05: "MSI", 0x06: "CHSWP",
    0x07: "PCIX", 0x08: "HT", 0x09: "VNDR", 0x0A: "DBG", 0x0B: "CCRC", 0x0C: "SHPC",
    0x0D: "SSVID", 0x0E: "AGP3", 0x0F: "SECDEV", 0x10: "EXP", 0x11: "MSI-X", 0x12: "SATA",
    0x13: "AF", 0x14: "EA", 0x15: "FPB",
}
#: Extended capability IDs (PCI_EXT_CAP_ID_*) -> name.
EXT_CAP_NAMES: dict[int, str] = {
    0x01: "ERR", 0x02: "VC", 0x03: "DSN", 0x04: "PWR", 0x05: "RCLD", 0x06: "RCILC",
    0x07: "RCEC", 0x08: "MFVC", 0x09: "VC9", 0x0A: "RCRB", 0x0B: "VNDR", 0x0C: "CAC",
    0x0D: "ACS", 0x0E: "ARI", 0x0F: "ATS", 0x10: "SRIOV", 0x11: "MRIOV", 0x12: "MCAST",
    0x13: "PRI", 0x14: "AMD_XXX", 0x15: "REBAR", 0x16: "DPA", 0x17: "TPH", 0x18: "LTR",
    0x19: "SECPCI", 0x1A: "PMUX", 0x1B: "PASID", 0x1C: "LNR", 0x1D: "DPC", 0x1E: "L1SS",
    0x1F: "PTM", 0x20: "MPCIE", 0x21: "FRS", 0x22: "RTR", 0x23: "DVSEC", 0x24: "VF_REBAR",
    0x25: "DLF", 0x26: "PL_16GT", 0x27: "LMR", 0x28: "HIER_ID", 0x29: "NPEM", 0x2A: "PL_32GT",
    0x2E: "DOE",
}

#: Capability names (any case; ``PCI_CAP_ID_<name>`` and ``PCI_EXT_CAP_ID_<name>`` too).
PCI_CAPS = NameTable("PCI capability", {n: i for i, n in CAP_NAMES.items()}, prefix="PCI_CAP_ID_")
PCI_EXT_CAPS = NameTable("PCI extended capability", {n: i for i, n in EXT_CAP_NAMES.items()},
                         prefix="PCI_EXT_CAP_ID_")


@hex_repr('offset')
@dataclass(frozen=True)
class PciCapability:
    """A capability found in config space: ``id`` at ``offset``; ``version`` for extended ones."""

    id: int
    offset: int
    extended: bool = False
    version: int = 0

    @property
    def name(self) -> str:
        table = EXT_CAP_NAMES if self.extended else CAP_NAMES
        return table.get(self.id, f"{'EXT_' if self.extended else ''}CAP_{self.id:#04x}")


@hex_repr('offset')
@dataclass(frozen=True)
class MsiCapability:
    offset: int
    enabled: bool
    vectors: int
    is_64bit: bool
    maskable: bool


@hex_repr('offset', 'table_offset', 'pba_offset')
@dataclass(frozen=True)
class MsixCapability:
    offset: int
    enabled: bool
    function_masked: bool
    table_size: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


@hex_repr('address', 'size')
@dataclass(frozen=True)
class BarInfo:
    """One BAR as config space and the region info describe it."""

    index: int
    address: int
    size: int
    io: bool
    is_64bit: bool
    prefetchable: bool
    mappable: bool

    @property
    def kind(self) -> str:
        if self.io:
            return "io"
        return ("mem64" if self.is_64bit else "mem32") + (" prefetch" if self.prefetchable else "")


class PciConfig:
    """Accessors over a device's CONFIG region (pread/pwrite at ``7 << 40`` for vfio-pci).

    Threads: reads may run concurrently; read-modify-write helpers (``update_command``,
    ``bus_master``) are not atomic: one writer at a time.
    """

    def __init__(self, device: "Device") -> None:
        self.device = device

    @property
    def size(self) -> int:
        """256 for conventional PCI, 4096 for PCIe (vfio-pci reports the function's cfg_size)."""
        return self.device.region_info(CONFIG).size

    # -- raw access ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return self.device.read(CONFIG, offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.device.write(CONFIG, offset, data)

    def read8(self, offset: int) -> int:
        return self.device.read_uint(CONFIG, offset, 1)

    def read16(self, offset: int) -> int:
        return self.device.read_uint(CONFIG, offset, 2)

    def read32(self, offset: int) -> int:
        return self.device.read_uint(CONFIG, offset, 4)

    def write8(self, offset: int, value: int) -> None:
        self.device.write_uint(CONFIG, offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        self.device.write_uint(CONFIG, offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        self.device.write_uint(CONFIG, offset, 4, value)

    def dump(self) -> bytes:
        """The whole config space as the device fd shows it (one pread)."""
        return self.read(0, self.size)

    # -- header ------------------------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return self.read16(0x00)

    @property
    def device_id(self) -> int:
        return self.read16(0x02)

    @property
    def revision(self) -> int:
        return self.read8(0x08)

    @property
    def class_code(self) -> int:
        """The 24-bit class code (base class, subclass, programming interface)."""
        return self.read32(0x08) >> 8

    @property
    def header_type(self) -> int:
        return self.read8(0x0E) & 0x7F

    @property
    def subsystem(self) -> tuple[int, int]:
        """(subsystem vendor, subsystem id) of a type-0 header."""
        return self.read16(0x2C), self.read16(0x2E)

    @property
    def interrupt_pin(self) -> int:
        """0 none, 1..4 INTA..INTD."""
        return self.read8(0x3D)

    @property
    def status(self) -> int:
        return self.read16(PCI_STATUS)

    # -- command register ----------------------------------------------------------------------
    @property
    def command(self) -> PciCommand:
        return PciCommand(self.read16(PCI_COMMAND))

    @command.setter
    def command(self, value: int) -> None:
        if not 0 <= int(value) <= 0xFFFF:
            raise ArgumentError(f"command value {value:#x} does not fit in 16 bits")
        self.write16(PCI_COMMAND, int(value))

    def update_command(self, set: int = 0, clear: int = 0) -> PciCommand:
        """Read-modify-write the command register; returns what reads back afterwards."""
        cmd = self.read16(PCI_COMMAND)
        self.write16(PCI_COMMAND, (cmd | int(set)) & ~int(clear) & 0xFFFF)
        return self.command

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PciCommand.MASTER)

    @bus_master.setter
    def bus_master(self, on: bool) -> None:
        if on:
            self.update_command(set=PciCommand.MASTER)
        else:
            self.update_command(clear=PciCommand.MASTER)

    def enable_bus_master(self) -> None:
        """Set PCI_COMMAND_MASTER: the device may now issue DMA (through the IOMMU)."""
        self.bus_master = True

    def disable_bus_master(self) -> None:
        self.bus_master = False

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & PciCommand.MEMORY)

    # -- capabilities --------------------------------------------------------------------------
    def capabilities(self, *, extended: bool = True) -> list[PciCapability]:
        """Walk the standard list (from 0x34) then, on 4 KiB config spaces, the extended list
        (from 0x100), with bounds and cycle guards. One pread of the whole space."""
        cfg = self.dump()
        return walk_capabilities(cfg, extended=extended)

    def find_capability(self, cap_id: int | str, *, extended: bool = False) -> PciCapability | None:
        """The first capability ``cap_id`` (a PCI_CAP_ID_* number or name in any case: "MSI",
        "msi-x", "PCI_CAP_ID_EXP"), or None when the device has none. ``extended`` looks in the
        extended list (a name found only there, e.g. "SRIOV", selects it). ArgumentError for an
        unknown name, listing the valid ones."""
        if (isinstance(cap_id, str) and not extended and PCI_CAPS.lookup(cap_id) is None
                and PCI_EXT_CAPS.lookup(cap_id) is not None):
            extended = True
        cap_id = (PCI_EXT_CAPS if extended else PCI_CAPS).resolve(cap_id)
        for c in self.capabilities(extended=extended):
            if c.id == cap_id and c.extended == extended:
                return c
        return None

    def msi(self) -> MsiCapability | None:
        """The MSI capability's control word decoded, or None."""
        c = self.find_capability(0x05)
        if c is None:
            return None
        ctl = self.read16(c.offset + 2)
        return MsiCapability(c.offset, bool(ctl & 1), 1 << ((ctl >> 1) & 7), bool(ctl & 0x80), bool(ctl & 0x100))

    def msix(self) -> MsixCapability | None:
        """The MSI-X capability decoded (table/PBA BAR and offset), or None."""
        c = self.find_capability(0x11)
        if c is None:
            return None
        ctl = self.read16(c.offset + 2)
        table = self.read32(c.offset + 4)
        pba = self.read32(c.offset + 8)
        return MsixCapability(c.offset, bool(ctl & 0x8000), bool(ctl & 0x4000), (ctl & 0x7FF) + 1,
                              table & 7, table & ~7, pba & 7, pba & ~7)

    # -- BARs ----------------------------------------------------------------------------------
    def bars(self) -> list[BarInfo]:
        """The implemented BARs (size > 0 in the region info), decoded from config space."""
        out: list[BarInfo] = []
        i = 0
        while i < 6:
            raw = self.read32(PCI_BASE_ADDRESS_0 + 4 * i)
            r = self.device.region_info(i)
            io = bool(raw & 1)
            is64 = not io and (raw >> 1) & 3 == 2
            if io:
                addr = raw & ~3
            else:
                addr = raw & ~0xF
                if is64 and i < 5:
                    addr |= self.read32(PCI_BASE_ADDRESS_0 + 4 * (i + 1)) << 32
            if r.size:
                out.append(BarInfo(i, addr, r.size, io, is64, bool(not io and raw & 8), r.mappable))
            i += 2 if is64 else 1
        return out


def walk_capabilities(cfg: bytes, *, extended: bool = True) -> list[PciCapability]:
    """Walk capability lists in a config-space image ``cfg`` (256 or 4096 bytes).

    Standard list: pointer at 0x34 (when status has CAP_LIST), entries at 0x40..0xff, next
    pointer low bits ignored. Extended list: from 0x100, 32-bit headers (id:16, version:4,
    next:12); a zero-ID header at 0x100 (how vfio-pci hides a first capability) is followed
    but not reported. Each walk stops at a repeated offset or an offset out of bounds.
    """
    if len(cfg) < PCI_STD_HEADER_SIZEOF:
        raise RangeError(f"config image of {len(cfg)} bytes is shorter than the header")
    caps: list[PciCapability] = []
    status = int.from_bytes(cfg[PCI_STATUS:PCI_STATUS + 2], "little")
    if status & PCI_STATUS_CAP_LIST:
        ptr = cfg[PCI_CAPABILITY_LIST] & ~3
        seen: set[int] = set()
        while ptr and PCI_STD_HEADER_SIZEOF <= ptr <= min(len(cfg), PCI_CFG_SPACE_SIZE) - 2 and ptr not in seen:
            seen.add(ptr)
            caps.append(PciCapability(cfg[ptr], ptr))
            ptr = cfg[ptr + 1] & ~3
    if extended and len(cfg) > PCI_CFG_SPACE_SIZE:
        off = PCI_CFG_SPACE_SIZE
        seen = set()
        while off and PCI_CFG_SPACE_SIZE <= off <= len(cfg) - 4 and off not in seen:
            seen.add(off)
            hdr = int.from_bytes(cfg[off:off + 4], "little")
            if hdr in (0, 0xFFFFFFFF):
                break
            cid, ver, nxt = hdr & 0xFFFF, (hdr >> 16) & 0xF, (hdr >> 20) & 0xFFC
            if cid != 0:
                caps.append(PciCapability(cid, off, True, ver))
            off = nxt
    return caps


__all__ = ["PciConfig", "PciCommand", "PciCapability", "MsiCapability", "MsixCapability", "BarInfo",
           "walk_capabilities", "CAP_NAMES", "EXT_CAP_NAMES", "PCI_CAPS",
           "PCI_EXT_CAPS"]
