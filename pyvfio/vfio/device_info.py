"""What a VFIO device reports: flag enums, region and IRQ indexes, and the info results of
VFIO_DEVICE_GET_INFO, GET_REGION_INFO, GET_IRQ_INFO and GET_PCI_HOT_RESET_INFO.

Plain values (enums and frozen dataclasses) with no fd: :class:`~pyvfio.vfio.device.Device`
returns them, and :mod:`pyvfio.vfio.pci` uses the region indexes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .. import ioctls as I
from ..util.hexrepr import hex_repr
from .caps import InfoCapability


# ---------------------------------------------------------------------------------------------
# flags and indexes
# ---------------------------------------------------------------------------------------------


class DeviceFlags(enum.IntFlag):
    """``vfio_device_info.flags``."""

    RESET = I.VFIO_DEVICE_FLAGS_RESET
    PCI = I.VFIO_DEVICE_FLAGS_PCI
    PLATFORM = I.VFIO_DEVICE_FLAGS_PLATFORM
    AMBA = I.VFIO_DEVICE_FLAGS_AMBA
    CCW = I.VFIO_DEVICE_FLAGS_CCW
    AP = I.VFIO_DEVICE_FLAGS_AP
    FSL_MC = I.VFIO_DEVICE_FLAGS_FSL_MC
    CAPS = I.VFIO_DEVICE_FLAGS_CAPS
    CDX = I.VFIO_DEVICE_FLAGS_CDX


class RegionFlags(enum.IntFlag):
    """``vfio_region_info.flags``."""

    READ = I.VFIO_REGION_INFO_FLAG_READ
    WRITE = I.VFIO_REGION_INFO_FLAG_WRITE
    MMAP = I.VFIO_REGION_INFO_FLAG_MMAP
    CAPS = I.VFIO_REGION_INFO_FLAG_CAPS


class IrqFlags(enum.IntFlag):
    """``vfio_irq_info.flags``."""

    EVENTFD = I.VFIO_IRQ_INFO_EVENTFD
    MASKABLE = I.VFIO_IRQ_INFO_MASKABLE
    AUTOMASKED = I.VFIO_IRQ_INFO_AUTOMASKED
    NORESIZE = I.VFIO_IRQ_INFO_NORESIZE


class IrqSetFlags(enum.IntFlag):
    """``vfio_irq_set.flags``: exactly one DATA_* and one ACTION_*."""

    DATA_NONE = I.VFIO_IRQ_SET_DATA_NONE
    DATA_BOOL = I.VFIO_IRQ_SET_DATA_BOOL
    DATA_EVENTFD = I.VFIO_IRQ_SET_DATA_EVENTFD
    ACTION_MASK = I.VFIO_IRQ_SET_ACTION_MASK
    ACTION_UNMASK = I.VFIO_IRQ_SET_ACTION_UNMASK
    ACTION_TRIGGER = I.VFIO_IRQ_SET_ACTION_TRIGGER


class _IndexEnumType(enum.EnumType):
    """An IntEnum whose ``dir()`` (and so ``help()``) lists its members, not int's 70 methods;
    the values still behave as ints."""

    def __dir__(cls) -> list[str]:
        return ["__class__", "__doc__", "__members__", "__module__", *cls._member_map_]


class PciRegion(enum.IntEnum, metaclass=_IndexEnumType):
    """vfio-pci region indexes."""

    BAR0 = I.VFIO_PCI_BAR0_REGION_INDEX
    BAR1 = I.VFIO_PCI_BAR1_REGION_INDEX
    BAR2 = I.VFIO_PCI_BAR2_REGION_INDEX
    BAR3 = I.VFIO_PCI_BAR3_REGION_INDEX
    BAR4 = I.VFIO_PCI_BAR4_REGION_INDEX
    BAR5 = I.VFIO_PCI_BAR5_REGION_INDEX
    ROM = I.VFIO_PCI_ROM_REGION_INDEX
    CONFIG = I.VFIO_PCI_CONFIG_REGION_INDEX
    VGA = I.VFIO_PCI_VGA_REGION_INDEX


class PciIrq(enum.IntEnum, metaclass=_IndexEnumType):
    """vfio-pci interrupt indexes."""

    INTX = I.VFIO_PCI_INTX_IRQ_INDEX
    MSI = I.VFIO_PCI_MSI_IRQ_INDEX
    MSIX = I.VFIO_PCI_MSIX_IRQ_INDEX
    ERR = I.VFIO_PCI_ERR_IRQ_INDEX
    REQ = I.VFIO_PCI_REQ_IRQ_INDEX


class DeviceFeature(enum.IntEnum):
    """VFIO_DEVICE_FEATURE numbers."""

    PCI_VF_TOKEN = I.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN
    MIGRATION = I.VFIO_DEVICE_FEATURE_MIGRATION
    MIG_DEVICE_STATE = I.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
    LOW_POWER_ENTRY = I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    LOW_POWER_ENTRY_WITH_WAKEUP = I.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP
    LOW_POWER_EXIT = I.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
    DMA_LOGGING_START = I.VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    DMA_LOGGING_STOP = I.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    DMA_LOGGING_REPORT = I.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
    MIG_DATA_SIZE = I.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
    BUS_MASTER = I.VFIO_DEVICE_FEATURE_BUS_MASTER


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """VFIO_DEVICE_GET_INFO's answer, with the capability chain parsed."""

    flags: DeviceFlags
    num_regions: int
    num_irqs: int
    caps: tuple[InfoCapability, ...] = ()

    @property
    def is_pci(self) -> bool:
        return bool(self.flags & DeviceFlags.PCI)

    @property
    def reset_supported(self) -> bool:
        return bool(self.flags & DeviceFlags.RESET)

    @property
    def pci_atomic_comp(self) -> int | None:
        """``VFIO_PCI_ATOMIC_COMP*`` flags the root port completes, or None when not reported."""
        for c in self.caps:
            if c.id == I.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP and len(c.data) >= 4:
                return int.from_bytes(c.data[:4], "little")
        return None


@hex_repr('offset', 'size')
@dataclass(frozen=True)
class SparseArea:
    """A mmap-able window of a region (``offset`` inside the region, ``size`` bytes)."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@hex_repr('size', 'offset')
@dataclass(frozen=True)
class RegionInfo:
    """VFIO_DEVICE_GET_REGION_INFO's answer with its capability chain parsed.

    ``sparse_areas`` is None when the region has no SPARSE_MMAP capability (then the whole
    region is mappable if ``MMAP`` is set); ``type``/``subtype`` come from the TYPE capability.
    """

    index: int
    flags: RegionFlags
    size: int
    offset: int
    caps: tuple[InfoCapability, ...] = ()
    sparse_areas: tuple[SparseArea, ...] | None = None
    msix_mappable: bool = False
    type: int | None = None
    subtype: int | None = None

    @property
    def readable(self) -> bool:
        return bool(self.flags & RegionFlags.READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & RegionFlags.WRITE)

    @property
    def mappable(self) -> bool:
        return bool(self.flags & RegionFlags.MMAP) and self.size > 0

    @property
    def name(self) -> str:
        try:
            return PciRegion(self.index).name
        except ValueError:
            return f"REGION{self.index}"

    def mmap_areas(self) -> tuple[SparseArea, ...]:
        """The areas that may be mapped: the sparse areas, the whole region, or none."""
        if not self.mappable:
            return ()
        if self.sparse_areas is not None:
            return self.sparse_areas
        return (SparseArea(0, self.size),)


@dataclass(frozen=True)
class IrqInfo:
    """VFIO_DEVICE_GET_IRQ_INFO's answer."""

    index: int
    flags: IrqFlags
    count: int

    @property
    def name(self) -> str:
        try:
            return PciIrq(self.index).name
        except ValueError:
            return f"IRQ{self.index}"


@dataclass(frozen=True)
class HotResetDevice:
    """One device a PCI hot reset would affect (``group_id`` or ``devid`` per the header flags)."""

    group_id: int
    segment: int
    bus: int
    devfn: int

    @property
    def bdf(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


@hex_repr('flags')
@dataclass(frozen=True)
class HotResetInfo:
    """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO's answer."""

    flags: int
    devices: tuple[HotResetDevice, ...]


__all__ = ["DeviceFlags", "RegionFlags", "IrqFlags", "IrqSetFlags", "PciRegion", "PciIrq",
           "DeviceFeature", "DeviceInfo", "SparseArea", "RegionInfo", "IrqInfo", "HotResetDevice",
           "HotResetInfo"]
