"""Request numbers and constants of linux/vfio.h, linux/iommufd.h and linux/kvm.h.

Module-level names are the kernel's macro names, encoded for the running
machine (``ioctls.VFIO_IOMMU_MAP_DMA``).  ``for_arch("ppc64le")`` (or
"x86_64", "aarch64") returns an object with the same names encoded for another
architecture, so tools and tests can check any encoding from any machine.

The ``_IOC`` encoding is architecture specific:

========  =====  =====  ======  =========  =========
layout    NONE   WRITE  READ    dir shift  size bits
========  =====  =====  ======  =========  =========
generic   0      1      2       30         14
powerpc   1      4      2       29         13
========  =====  =====  ======  =========  =========

so ``VFIO_GET_API_VERSION`` (``_IO(';', 100)``) is 0x3b64 on x86_64 and
0x20003b64 on ppc64le.  Every VFIO request is ``_IO`` whatever the header
comments say, and ``VFIO_IOMMU_DIRTY_PAGES`` (type1) and
``VFIO_IOMMU_SPAPR_REGISTER_MEMORY`` (sPAPR) share one number: dispatch by the
container's IOMMU type.

Request numbers are instances of :class:`Request` (an ``int`` that remembers
its direction, type, number and argument struct).  Constants are plain ints,
identical on every architecture except those in ``ARCH_CONSTANTS``.
Everything here is checked against the kernel headers by
``tests/uapi/test_layout.py`` (values from the C compiler, never by eye).
"""

from __future__ import annotations

import platform
import types
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ARCH",
    "ARCHES",
    "IocLayout",
    "Request",
    "UnsupportedArchError",
    "for_arch",
    "request_names",
    "constants",
    "names_for_request",
    "normalize_arch",
]


class UnsupportedArchError(ValueError):
    """An architecture name pyvfio has no ``_IOC`` layout for."""


# ---------------------------------------------------------------------------
# _IOC encoding
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class IocLayout:
    """The ``asm/ioctl.h`` parameters of one architecture family."""

    name: str
    none: int
    write: int
    read: int
    sizebits: int
    dirbits: int
    nrbits: int = 8
    typebits: int = 8

    @property
    def nrshift(self) -> int:
        return 0

    @property
    def typeshift(self) -> int:
        return self.nrshift + self.nrbits

    @property
    def sizeshift(self) -> int:
        return self.typeshift + self.typebits

    @property
    def dirshift(self) -> int:
        return self.sizeshift + self.sizebits

    def encode(self, dir: int, type: int, nr: int, size: int) -> int:
        """``_IOC(dir, type, nr, size)``; raises ValueError when a field does not fit."""
        for what, value, bits in (("dir", dir, self.dirbits), ("type", type, self.typebits),
                                  ("nr", nr, self.nrbits), ("size", size, self.sizebits)):
            if not 0 <= value < (1 << bits):
                raise ValueError(f"_IOC {what}={value:#x} does not fit in {bits} bits ({self.name})")
        return ((dir << self.dirshift) | (type << self.typeshift)
                | (nr << self.nrshift) | (size << self.sizeshift))

    def decode(self, request: int) -> tuple[int, int, int, int]:
        """Inverse of :meth:`encode`: ``(dir, type, nr, size)``."""
        if not 0 <= request < (1 << 32):
            raise ValueError(f"ioctl request {request:#x} is not a 32-bit number")

        def field(shift: int, bits: int) -> int:
            return (request >> shift) & ((1 << bits) - 1)

        return (field(self.dirshift, self.dirbits), field(self.typeshift, self.typebits),
                field(self.nrshift, self.nrbits), field(self.sizeshift, self.sizebits))

    def IO(self, type: int, nr: int) -> int:  # noqa: N802 - kernel macro names
        return self.encode(self.none, type, nr, 0)

    def IOR(self, type: int, nr: int, size: int) -> int:  # noqa: N802
        return self.encode(self.read, type, nr, size)

    def IOW(self, type: int, nr: int, size: int) -> int:  # noqa: N802
        return self.encode(self.write, type, nr, size)

    def IOWR(self, type: int, nr: int, size: int) -> int:  # noqa: N802
        return self.encode(self.read | self.write, type, nr, size)


GENERIC: Final = IocLayout("generic", none=0, write=1, read=2, sizebits=14, dirbits=2)
POWERPC: Final = IocLayout("powerpc", none=1, write=4, read=2, sizebits=13, dirbits=3)

#: pyvfio's architecture names -> their ``_IOC`` layout.
ARCHES: Final[dict[str, IocLayout]] = {"x86_64": GENERIC, "aarch64": GENERIC, "ppc64le": POWERPC}
_ALIASES: Final = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64",
                   "ppc64el": "ppc64le", "powerpc64le": "ppc64le"}


def normalize_arch(arch: str | None = None) -> str:
    """Map a machine name (``platform.machine()`` or Debian's) to x86_64/aarch64/ppc64le."""
    name = platform.machine() if arch is None else arch
    name = _ALIASES.get(name.lower(), name.lower())
    if name not in ARCHES:
        raise UnsupportedArchError(
            f"no ioctl encoding for architecture {name!r}; supported: {', '.join(ARCHES)}")
    return name


ARCH: Final[str] = normalize_arch()
_NATIVE: Final[IocLayout] = ARCHES[ARCH]


# ---------------------------------------------------------------------------
# Argument sizes (LP64; identical on x86_64, aarch64 and ppc64le except where noted).
# The layout test checks every one against the compiler and against pyvfio.uapi.ffi.
# ---------------------------------------------------------------------------

#: struct name -> sizeof, for structs whose size is encoded in a request number.
SIZEOF: Final[dict[str, int]] = {
    "__u64": 8,
    "kvm_dirty_log": 16,
    "kvm_clear_dirty_log": 24,
    "kvm_userspace_memory_region": 32,
    "kvm_userspace_memory_region2": 160,
    "kvm_irqfd": 32,
    "kvm_ioeventfd": 64,
    "kvm_create_device": 12,
    "kvm_device_attr": 24,
    "kvm_enable_cap": 104,
    "kvm_memory_attributes": 32,
    "kvm_create_guest_memfd": 64,
    # x86-only layouts (struct kvm_regs / kvm_sregs differ per arch)
    "kvm_regs": 144,
    "kvm_sregs": 312,
}

#: Requests whose argument (or whole meaning) exists only on x86.
X86_ONLY: Final[frozenset[str]] = frozenset({
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS",
    "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR",
})


class Request(int):
    """An ioctl request number that remembers how it was encoded.

    ``dir_kind`` is "IO", "IOR", "IOW" or "IOWR"; ``struct`` is the kernel
    name of the argument type whose size is encoded (None for ``_IO``, whose
    argument -- if any -- is still documented in ``ARG_STRUCTS``).  ``name`` is
    the kernel's macro name (what errors report as ``op``); requests that share a
    number (0x3b75) are distinct objects with their own names.
    """

    name: str = ""
    dir_kind: str
    ioc_type: int
    nr: int
    struct: str | None

    def __new__(cls, value: int, dir_kind: str, ioc_type: int, nr: int,
                struct: str | None) -> Request:
        self = super().__new__(cls, value)
        self.dir_kind = dir_kind
        self.ioc_type = ioc_type
        self.nr = nr
        self.struct = struct
        return self

    @property
    def arg_struct(self) -> str | None:
        """The kernel name of the argument type: ``struct`` (encoded in the number) or, for
        ``_IO`` requests, the ``ARG_STRUCTS`` entry (None: no argument)."""
        if self.struct:
            return self.struct
        return ARG_STRUCTS.get(self.name.partition("(")[0])

    @property
    def cdecl(self) -> str:
        """The C type of a pointer to the argument (``"struct vfio_iommu_type1_dma_map *"``), as
        ``ffi.from_buffer``/``ffi.cast`` take it; ``"char *"`` when there is no argument."""
        arg = self.arg_struct
        if arg is None:
            return "char *"
        if arg in _SCALAR_ARGS:
            return f"{arg} *"
        return f"struct {arg} *"

    def variant(self, mode: str) -> Request:
        """This request number under a distinct object named ``NAME(mode)``, for requests whose
        flags select an operation (``VFIO_IOMMU_DIRTY_PAGES(START)``): errors and hints then
        name the mode. Not entered in the request tables."""
        other = Request(int(self), self.dir_kind, self.ioc_type, self.nr, self.struct)
        other.name = f"{self.name}({mode})"
        return other

    def reencode(self, layout: IocLayout) -> int:
        """This request's number under another architecture's layout."""
        size = SIZEOF[self.struct] if self.struct else 0
        if self.dir_kind == "IO":
            return layout.IO(self.ioc_type, self.nr)
        return int(getattr(layout, self.dir_kind)(self.ioc_type, self.nr, size))

    def __repr__(self) -> str:
        arg = f", {self.struct}" if self.struct else ""
        return f"<{self.name or 'request'} _{self.dir_kind}({self.ioc_type:#x}, {self.nr:#x}{arg}) = {int(self):#x}>"


#: ``ARG_STRUCTS`` entries that are C scalar types, not struct names.
_SCALAR_ARGS: Final = frozenset({"int", "char", "__u32", "__u64", "__s32"})


def _IO(type: int, nr: int) -> Request:  # noqa: N802
    return Request(_NATIVE.IO(type, nr), "IO", type, nr, None)


def _IOR(type: int, nr: int, struct: str) -> Request:  # noqa: N802
    return Request(_NATIVE.IOR(type, nr, SIZEOF[struct]), "IOR", type, nr, struct)


def _IOW(type: int, nr: int, struct: str) -> Request:  # noqa: N802
    return Request(_NATIVE.IOW(type, nr, SIZEOF[struct]), "IOW", type, nr, struct)


def _IOWR(type: int, nr: int, struct: str) -> Request:  # noqa: N802
    return Request(_NATIVE.IOWR(type, nr, SIZEOF[struct]), "IOWR", type, nr, struct)


_IOC_NONE: Final = _NATIVE.none
_IOC_WRITE: Final = _NATIVE.write
_IOC_READ: Final = _NATIVE.read


# ===========================================================================
# linux/vfio.h
# ===========================================================================

VFIO_API_VERSION = 0

# IOMMU types / extensions (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU)
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_TYPE1_NESTING_IOMMU = 6
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100

# group status
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

# device info
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8
VFIO_DEVICE_INFO_CAP_ZPCI_BASE = 1
VFIO_DEVICE_INFO_CAP_ZPCI_GROUP = 2
VFIO_DEVICE_INFO_CAP_ZPCI_UTIL = 3
VFIO_DEVICE_INFO_CAP_ZPCI_PFIP = 4
VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5
VFIO_PCI_ATOMIC_COMP32 = 1 << 0
VFIO_PCI_ATOMIC_COMP64 = 1 << 1
VFIO_PCI_ATOMIC_COMP128 = 1 << 2

# region info
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3
VFIO_REGION_INFO_CAP_NVLINK2_SSATGT = 4
VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD = 5
VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF
VFIO_REGION_TYPE_GFX = 1
VFIO_REGION_TYPE_CCW = 2
VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3
VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1
VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG = 2
VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG = 3
VFIO_REGION_SUBTYPE_NVIDIA_NVLINK2_RAM = 1
VFIO_REGION_SUBTYPE_IBM_NVLINK2_ATSD = 1
VFIO_REGION_SUBTYPE_GFX_EDID = 1
VFIO_DEVICE_GFX_LINK_STATE_UP = 1
VFIO_DEVICE_GFX_LINK_STATE_DOWN = 2
VFIO_GFX_PLANE_TYPE_PROBE = 1 << 0
VFIO_GFX_PLANE_TYPE_DMABUF = 1 << 1
VFIO_GFX_PLANE_TYPE_REGION = 1 << 2

# irq info / set irqs
VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
VFIO_IRQ_SET_ACTION_TYPE_MASK = (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK
                                 | VFIO_IRQ_SET_ACTION_TRIGGER)

# vfio-pci region and irq indexes (enums in the header)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

# hot reset
VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1
VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1

# device ioeventfd
VFIO_DEVICE_IOEVENTFD_8 = 1 << 0
VFIO_DEVICE_IOEVENTFD_16 = 1 << 1
VFIO_DEVICE_IOEVENTFD_32 = 1 << 2
VFIO_DEVICE_IOEVENTFD_64 = 1 << 3
VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xF

# device features
VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10
VFIO_DEVICE_FEATURE_CLEAR_MASTER = 0
VFIO_DEVICE_FEATURE_SET_MASTER = 1
VFIO_MIGRATION_STOP_COPY = 1 << 0
VFIO_MIGRATION_P2P = 1 << 1
VFIO_MIGRATION_PRE_COPY = 1 << 2
# enum vfio_device_mig_state
VFIO_DEVICE_STATE_ERROR = 0
VFIO_DEVICE_STATE_STOP = 1
VFIO_DEVICE_STATE_RUNNING = 2
VFIO_DEVICE_STATE_STOP_COPY = 3
VFIO_DEVICE_STATE_RESUMING = 4
VFIO_DEVICE_STATE_RUNNING_P2P = 5
VFIO_DEVICE_STATE_PRE_COPY = 6
VFIO_DEVICE_STATE_PRE_COPY_P2P = 7

# type1 IOMMU info / map / unmap / dirty pages
VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3
VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2
VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2

# sPAPR TCE IOMMU and EEH
VFIO_IOMMU_SPAPR_INFO_DDW = 1 << 0
VFIO_EEH_PE_DISABLE = 0
VFIO_EEH_PE_ENABLE = 1
VFIO_EEH_PE_UNFREEZE_IO = 2
VFIO_EEH_PE_UNFREEZE_DMA = 3
VFIO_EEH_PE_GET_STATE = 4
VFIO_EEH_PE_STATE_NORMAL = 0
VFIO_EEH_PE_STATE_RESET = 1
VFIO_EEH_PE_STATE_STOPPED = 2
VFIO_EEH_PE_STATE_STOPPED_DMA = 4
VFIO_EEH_PE_STATE_UNAVAIL = 5
VFIO_EEH_PE_RESET_DEACTIVATE = 5
VFIO_EEH_PE_RESET_HOT = 6
VFIO_EEH_PE_RESET_FUNDAMENTAL = 7
VFIO_EEH_PE_CONFIGURE = 8
VFIO_EEH_PE_INJECT_ERR = 9

# --- requests (all _IO, whatever the header comments say) ---
VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)
VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)
VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)
VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_DEVICE_QUERY_GFX_PLANE = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_DEVICE_GET_GFX_DMABUF = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16)
VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)
VFIO_MIG_GET_PRECOPY_INFO = _IO(VFIO_TYPE, VFIO_BASE + 21)
VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16)
#: Same number as VFIO_IOMMU_SPAPR_REGISTER_MEMORY: dispatch by IOMMU type.
VFIO_IOMMU_DIRTY_PAGES = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_IOMMU_SPAPR_TCE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_EEH_PE_OP = _IO(VFIO_TYPE, VFIO_BASE + 21)
#: Same number as VFIO_IOMMU_DIRTY_PAGES: dispatch by IOMMU type.
VFIO_IOMMU_SPAPR_REGISTER_MEMORY = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY = _IO(VFIO_TYPE, VFIO_BASE + 18)
VFIO_IOMMU_SPAPR_TCE_CREATE = _IO(VFIO_TYPE, VFIO_BASE + 19)
VFIO_IOMMU_SPAPR_TCE_REMOVE = _IO(VFIO_TYPE, VFIO_BASE + 20)


# ===========================================================================
# linux/iommufd.h (6.12 uAPI)
# ===========================================================================

IOMMUFD_TYPE = ord(";")
# enum of command numbers
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = 0x80
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E

IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_VTD_S1_SRE = 1 << 0
IOMMU_VTD_S1_EAFE = 1 << 1
IOMMU_VTD_S1_WPE = 1 << 2
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0
IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1
IOMMU_PGFAULT_PERM_READ = 1 << 0
IOMMU_PGFAULT_PERM_WRITE = 1 << 1
IOMMU_PGFAULT_PERM_EXEC = 1 << 2
IOMMU_PGFAULT_PERM_PRIV = 1 << 3
IOMMUFD_PAGE_RESP_SUCCESS = 0
IOMMUFD_PAGE_RESP_INVALID = 1

# --- requests ---
IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)


# ===========================================================================
# linux/kvm.h (memory and device part)
# ===========================================================================

KVMIO = 0xAE
KVM_API_VERSION = 12

# memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# capabilities (KVM_CHECK_EXTENSION / KVM_ENABLE_CAP)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_USER_NMI = 22
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_ENABLE_CAP = 54
KVM_CAP_SPAPR_TCE = 63
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_ENABLE_CAP_VM = 98
KVM_CAP_CHECK_EXTENSION_VM = 105
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_SPAPR_TCE_64 = 125
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_SPAPR_TCE_VFIO = 142
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
KVM_CAP_DIRTY_LOG_RING = 192
KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223
KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235

# KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) arguments
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1

# dirty ring entries (struct kvm_dirty_gfn.flags)
KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
KVM_DIRTY_GFN_F_MASK = 0x3

# memory attributes / guest memfd
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3

# exit reasons (struct kvm_run.exit_reason)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_PAPR_HCALL = 19
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
# struct kvm_run.internal.suberror / system_event.type / memory_fault.flags
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

# ioeventfd / irqfd flags
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY = 1 << 3
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

# devices (enum kvm_device_type) and the VFIO device's attributes
KVM_CREATE_DEVICE_TEST = 1
KVM_DEV_TYPE_FSL_MPIC_20 = 1
KVM_DEV_TYPE_FSL_MPIC_42 = 2
KVM_DEV_TYPE_XICS = 3
KVM_DEV_TYPE_VFIO = 4
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_FLIC = 6
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_ARM_VGIC_ITS = 8
KVM_DEV_TYPE_XIVE = 9
KVM_DEV_TYPE_ARM_PV_TIME = 10
KVM_DEV_TYPE_RISCV_AIA = 11
KVM_DEV_VFIO_FILE = 1
KVM_DEV_VFIO_FILE_ADD = 1
KVM_DEV_VFIO_FILE_DEL = 2
KVM_DEV_VFIO_GROUP = 1
KVM_DEV_VFIO_GROUP_ADD = 1
KVM_DEV_VFIO_GROUP_DEL = 2
KVM_DEV_VFIO_GROUP_SET_SPAPR_TCE = 3

# --- requests ---
# system (/dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
# VM
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, "kvm_dirty_log")
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, "kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, "__u64")
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, "kvm_userspace_memory_region2")
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQFD = _IOW(KVMIO, 0x76, "kvm_irqfd")
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, "kvm_ioeventfd")
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, "kvm_enable_cap")
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xC0, "kvm_clear_dirty_log")
KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xC7)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xD2, "kvm_memory_attributes")
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, "kvm_create_guest_memfd")
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, "kvm_create_device")
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, "kvm_device_attr")
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, "kvm_device_attr")
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, "kvm_device_attr")
# vCPU
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, "kvm_regs")
KVM_SET_REGS = _IOW(KVMIO, 0x82, "kvm_regs")
KVM_GET_SREGS = _IOR(KVMIO, 0x83, "kvm_sregs")
KVM_SET_SREGS = _IOW(KVMIO, 0x84, "kvm_sregs")

#: Constants whose value differs between architectures: name -> {arch: value}.
ARCH_CONSTANTS: Final[dict[str, dict[str, int]]] = {
    # page offset of the dirty ring inside the vCPU mmap (asm/kvm.h; generic default 0)
    "KVM_DIRTY_LOG_PAGE_OFFSET": {"x86_64": 64, "aarch64": 64, "ppc64le": 0},
    "KVM_COALESCED_MMIO_PAGE_OFFSET": {"x86_64": 2, "aarch64": 1, "ppc64le": 1},
}
KVM_DIRTY_LOG_PAGE_OFFSET: int = ARCH_CONSTANTS["KVM_DIRTY_LOG_PAGE_OFFSET"][ARCH]
KVM_COALESCED_MMIO_PAGE_OFFSET: int = ARCH_CONSTANTS["KVM_COALESCED_MMIO_PAGE_OFFSET"][ARCH]

#: Argument struct of each request (kernel names; "int" for a plain value
#: argument; None for no argument).  Documents ``_IO`` requests too.
ARG_STRUCTS: Final[dict[str, str | None]] = {
    "VFIO_GET_API_VERSION": None,
    "VFIO_CHECK_EXTENSION": "int",
    "VFIO_SET_IOMMU": "int",
    "VFIO_GROUP_GET_STATUS": "vfio_group_status",
    "VFIO_GROUP_SET_CONTAINER": "int",
    "VFIO_GROUP_UNSET_CONTAINER": None,
    "VFIO_GROUP_GET_DEVICE_FD": "char",
    "VFIO_DEVICE_GET_INFO": "vfio_device_info",
    "VFIO_DEVICE_GET_REGION_INFO": "vfio_region_info",
    "VFIO_DEVICE_GET_IRQ_INFO": "vfio_irq_info",
    "VFIO_DEVICE_SET_IRQS": "vfio_irq_set",
    "VFIO_DEVICE_RESET": None,
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": "vfio_pci_hot_reset_info",
    "VFIO_DEVICE_PCI_HOT_RESET": "vfio_pci_hot_reset",
    "VFIO_DEVICE_QUERY_GFX_PLANE": "vfio_device_gfx_plane_info",
    "VFIO_DEVICE_GET_GFX_DMABUF": "__u32",
    "VFIO_DEVICE_IOEVENTFD": "vfio_device_ioeventfd",
    "VFIO_DEVICE_FEATURE": "vfio_device_feature",
    "VFIO_DEVICE_BIND_IOMMUFD": "vfio_device_bind_iommufd",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": "vfio_device_attach_iommufd_pt",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": "vfio_device_detach_iommufd_pt",
    "VFIO_MIG_GET_PRECOPY_INFO": "vfio_precopy_info",
    "VFIO_IOMMU_GET_INFO": "vfio_iommu_type1_info",
    "VFIO_IOMMU_MAP_DMA": "vfio_iommu_type1_dma_map",
    "VFIO_IOMMU_UNMAP_DMA": "vfio_iommu_type1_dma_unmap",
    "VFIO_IOMMU_ENABLE": None,
    "VFIO_IOMMU_DISABLE": None,
    "VFIO_IOMMU_DIRTY_PAGES": "vfio_iommu_type1_dirty_bitmap",
    "VFIO_IOMMU_SPAPR_TCE_GET_INFO": "vfio_iommu_spapr_tce_info",
    "VFIO_EEH_PE_OP": "vfio_eeh_pe_op",
    "VFIO_IOMMU_SPAPR_REGISTER_MEMORY": "vfio_iommu_spapr_register_memory",
    "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY": "vfio_iommu_spapr_register_memory",
    "VFIO_IOMMU_SPAPR_TCE_CREATE": "vfio_iommu_spapr_tce_create",
    "VFIO_IOMMU_SPAPR_TCE_REMOVE": "vfio_iommu_spapr_tce_remove",
    "IOMMU_DESTROY": "iommu_destroy",
    "IOMMU_IOAS_ALLOC": "iommu_ioas_alloc",
    "IOMMU_IOAS_IOVA_RANGES": "iommu_ioas_iova_ranges",
    "IOMMU_IOAS_ALLOW_IOVAS": "iommu_ioas_allow_iovas",
    "IOMMU_IOAS_MAP": "iommu_ioas_map",
    "IOMMU_IOAS_COPY": "iommu_ioas_copy",
    "IOMMU_IOAS_UNMAP": "iommu_ioas_unmap",
    "IOMMU_OPTION": "iommu_option",
    "IOMMU_VFIO_IOAS": "iommu_vfio_ioas",
    "IOMMU_HWPT_ALLOC": "iommu_hwpt_alloc",
    "IOMMU_GET_HW_INFO": "iommu_hw_info",
    "IOMMU_HWPT_SET_DIRTY_TRACKING": "iommu_hwpt_set_dirty_tracking",
    "IOMMU_HWPT_GET_DIRTY_BITMAP": "iommu_hwpt_get_dirty_bitmap",
    "IOMMU_HWPT_INVALIDATE": "iommu_hwpt_invalidate",
    "IOMMU_FAULT_QUEUE_ALLOC": "iommu_fault_alloc",
    "KVM_GET_API_VERSION": None,
    "KVM_CREATE_VM": "int",
    "KVM_CHECK_EXTENSION": "int",
    "KVM_GET_VCPU_MMAP_SIZE": None,
    "KVM_CREATE_VCPU": "int",
    "KVM_GET_DIRTY_LOG": "kvm_dirty_log",
    "KVM_SET_USER_MEMORY_REGION": "kvm_userspace_memory_region",
    "KVM_SET_TSS_ADDR": "int",
    "KVM_SET_IDENTITY_MAP_ADDR": "__u64",
    "KVM_SET_USER_MEMORY_REGION2": "kvm_userspace_memory_region2",
    "KVM_CREATE_IRQCHIP": None,
    "KVM_IRQFD": "kvm_irqfd",
    "KVM_IOEVENTFD": "kvm_ioeventfd",
    "KVM_ENABLE_CAP": "kvm_enable_cap",
    "KVM_CLEAR_DIRTY_LOG": "kvm_clear_dirty_log",
    "KVM_RESET_DIRTY_RINGS": None,
    "KVM_SET_MEMORY_ATTRIBUTES": "kvm_memory_attributes",
    "KVM_CREATE_GUEST_MEMFD": "kvm_create_guest_memfd",
    "KVM_CREATE_DEVICE": "kvm_create_device",
    "KVM_SET_DEVICE_ATTR": "kvm_device_attr",
    "KVM_GET_DEVICE_ATTR": "kvm_device_attr",
    "KVM_HAS_DEVICE_ATTR": "kvm_device_attr",
    "KVM_RUN": None,
    "KVM_GET_REGS": "kvm_regs",
    "KVM_SET_REGS": "kvm_regs",
    "KVM_GET_SREGS": "kvm_sregs",
    "KVM_SET_SREGS": "kvm_sregs",
}


# ---------------------------------------------------------------------------
# Tables and per-architecture views
# ---------------------------------------------------------------------------

def _is_public_constant(name: str, value: object) -> bool:
    return (name.isupper() or name[:1].isupper()) and not name.startswith("_") \
        and type(value) is int and name not in ARCH_CONSTANTS


_REQUESTS: Final[dict[str, Request]] = {
    name: value for name, value in list(globals().items())
    if isinstance(value, Request) and not name.startswith("_")
}
for _name, _req in _REQUESTS.items():
    _req.name = _name

_CONSTANTS: Final[dict[str, int]] = {
    name: value for name, value in list(globals().items()) if _is_public_constant(name, value)
}


def _applies(name: str, arch: str) -> bool:
    return arch == "x86_64" or name not in X86_ONLY


# x86-only requests do not exist at module level on other machines.
for _name in list(_REQUESTS):
    if not _applies(_name, ARCH):
        del globals()[_name]


def request_names(arch: str | None = None) -> dict[str, int]:
    """Every request name -> its number on ``arch`` (default: the running machine).

    x86-only requests (``X86_ONLY``) are left out on other architectures.
    """
    a = normalize_arch(arch)
    layout = ARCHES[a]
    return {name: req.reencode(layout) for name, req in _REQUESTS.items() if _applies(name, a)}


def constants(arch: str | None = None) -> dict[str, int]:
    """Every non-request constant name -> value on ``arch`` (default: the running machine)."""
    a = normalize_arch(arch)
    out = dict(_CONSTANTS)
    out.update({name: per_arch[a] for name, per_arch in ARCH_CONSTANTS.items()})
    return out


def requests(arch: str | None = None) -> dict[str, Request]:
    """Every request name -> :class:`Request` (encoded for ``arch``), for tools."""
    a = normalize_arch(arch)
    layout = ARCHES[a]
    out = {}
    for name, req in _REQUESTS.items():
        if _applies(name, a):
            other = Request(req.reencode(layout), req.dir_kind, req.ioc_type, req.nr, req.struct)
            other.name = name
            out[name] = other
    return out


def names_for_request(number: int, arch: str | None = None) -> tuple[str, ...]:
    """All request names with this number (VFIO_IOMMU_DIRTY_PAGES shares 0x3b75)."""
    return tuple(name for name, value in request_names(arch).items() if value == number)


_ARCH_CACHE: dict[str, types.SimpleNamespace] = {}


def for_arch(arch: str) -> types.SimpleNamespace:
    """A namespace with every request and constant name, encoded for ``arch``.

    Also carries ``ARCH``, ``LAYOUT`` and ``_IOC_NONE/_IOC_READ/_IOC_WRITE``, and
    the encoders ``_IO/_IOR/_IOW/_IOWR/_IOC`` taking sizes in bytes.
    """
    a = normalize_arch(arch)
    if a not in _ARCH_CACHE:
        layout = ARCHES[a]
        ns = types.SimpleNamespace(**constants(a), **requests(a))
        ns.ARCH = a
        ns.LAYOUT = layout
        ns._IOC_NONE, ns._IOC_READ, ns._IOC_WRITE = layout.none, layout.read, layout.write
        ns._IOC, ns._IO, ns._IOR, ns._IOW, ns._IOWR = (
            layout.encode, layout.IO, layout.IOR, layout.IOW, layout.IOWR)
        _ARCH_CACHE[a] = ns
    return _ARCH_CACHE[a]


def _IOC(dir: int, type: int, nr: int, size: int) -> int:  # noqa: N802
    """``_IOC`` for the running machine."""
    return _NATIVE.encode(dir, type, nr, size)


def _IOC_DIR(request: int) -> int:  # noqa: N802
    return _NATIVE.decode(request)[0]


def _IOC_TYPE(request: int) -> int:  # noqa: N802
    return _NATIVE.decode(request)[1]


def _IOC_NR(request: int) -> int:  # noqa: N802
    return _NATIVE.decode(request)[2]


def _IOC_SIZE(request: int) -> int:  # noqa: N802
    return _NATIVE.decode(request)[3]


del _name
