"""Mock VFIO core: the machine topology, /dev/vfio/vfio (containers) and /dev/vfio/N (groups).

Follows drivers/vfio/container.c and drivers/vfio/group.c (6.x):

* The container answers GET_API_VERSION (0), CHECK_EXTENSION (asks the IOMMU drivers; once an
  IOMMU is set only that one) and SET_IOMMU (EINVAL without a group or when already set; ENODEV
  when no driver supports the type; the attach error, e.g. EPERM without interrupt remapping,
  when a driver refuses a group). Every other request goes to the IOMMU driver object chosen by
  SET_IOMMU, EINVAL before that (so MAP_DMA before SET_IOMMU is EINVAL, as in the kernel). The
  driver object dispatches by request number, so VFIO_IOMMU_DIRTY_PAGES (type1) and
  VFIO_IOMMU_SPAPR_REGISTER_MEMORY (sPAPR) — the same number — reach whichever driver is set.
* A group opens once (EBUSY otherwise), reports VIABLE when no device of the IOMMU group is
  bound to a host driver, SET_CONTAINER refuses a non-viable group with EPERM (the iommu core's
  DMA-ownership claim), an already attached group with EINVAL, a non-container fd with EBADFD;
  UNSET_CONTAINER gives EINVAL without a container and EBUSY while device fds are open;
  GET_DEVICE_FD gives ENODEV for a device that is not in the group or not bound to vfio-pci and
  EINVAL before the container has an IOMMU. Device fds hold the group file; closing the group
  file detaches it from its container, and the last group leaving a container releases the IOMMU
  (and with it every mapping).

The topology (which devices exist, their IOMMU groups and drivers, :mod:`.topology`) is described
by the kernel's host (:mod:`pyvfio.mockkernel.host`) in a sysfs tree under ``kernel.sysfs_root``
laid out like the kernel's, so discovery code reads the same files on the mock and on a real
machine::

    bus/pci/devices/BDF/{vendor,device,class,iommu_group -> ../../../kernel/iommu_groups/N,
                         driver -> ../../../bus/pci/drivers/DRV}
    kernel/iommu_groups/N/devices/BDF -> ../../../../bus/pci/devices/BDF
    module/vfio_iommu_type1/parameters/{dma_entry_limit,allow_unsafe_interrupts}

Simulated PCI devices (:mod:`pyvfio.mockkernel.pci`) are added with
:func:`~pyvfio.mockkernel.vfio.topology.add_device`; their DMA goes through
:meth:`~pyvfio.mockkernel.vfio.group.MockGroup.translate` / ``dma_read`` / ``dma_write``, which consult the container's IOMMU and log a DMAR-style fault to
``kernel.dmesg`` when the IOVA is unmapped or lacks the permission.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...uapi import ffi
from ..core import KernelError, MockFile, MockKernel
from ..task import MockTask

if TYPE_CHECKING:
    from .container import ContainerFile
    from .group import MockGroup

NAME = "vfio"

#: Drivers that leave a group viable (driver_managed_dma in the kernel).
VFIO_FRIENDLY_DRIVERS = frozenset({"vfio-pci", "pci-stub"})


class IommuFault(KernelError):
    """A device access the IOMMU refused (unmapped IOVA or missing permission)."""


@dataclass
class PciIdentity:
    """The sysfs identity of a PCI function with no simulated behaviour (e.g. a NIC left on its
    host driver). Simulated devices from :mod:`pyvfio.mockkernel.pci` carry the same names."""

    name: str
    vendor_id: int
    device_id: int
    class_code: int
    subsystem_vendor_id: int = 0x1AF4
    subsystem_id: int = 0x1100


@dataclass
class DeviceEntry:
    name: str
    sim: Any
    group: "MockIommuGroup"
    driver: str | None


@dataclass
class MockIommuGroup:
    """An IOMMU group: its devices and the VFIO group state when one exists."""

    number: int
    devices: list[DeviceEntry] = field(default_factory=list)
    #: Reserved IOVA regions of the group (start, end inclusive), e.g. the x86 MSI window.
    reserved: list[tuple[int, int]] = field(default_factory=list)
    #: IOVA aperture of the IOMMU domain (start, end inclusive).
    aperture: tuple[int, int] = (0, (1 << 39) - 1)
    #: The IOMMU supports interrupt remapping (else type1 needs allow_unsafe_interrupts).
    interrupt_remapping: bool = True
    vfio: "MockGroup | None" = None

    @property
    def viable(self) -> bool:
        return all(d.driver is None or d.driver in VFIO_FRIENDLY_DRIVERS for d in self.devices)

    def has_vfio_device(self) -> bool:
        return any(d.driver == "vfio-pci" for d in self.devices)


@dataclass


class VfioState:
    """Per-kernel VFIO state: topology, IOMMU drivers, the simulated task."""

    def __init__(self, kernel: MockKernel) -> None:
        self.kernel = kernel
        self.groups: dict[int, MockIommuGroup] = {}
        self.devices: dict[str, DeviceEntry] = {}
        #: IOMMU driver classes in registration order (the kernel's iommu_drivers_list).
        self.iommu_drivers: list[type["IommuDriver"]] = []
        self.task = MockTask()
        #: ``blocked(group) -> bool``: another interface owns the group (iommufd's bound cdevs),
        #: so /dev/vfio/N gives EBUSY (vfio_group_fops_open).
        self.open_blockers: list[Callable[[int], bool]] = []

    # -- module parameters live in the host's sysfs, so tests write them like on a real host --
    def param_path(self, module: str, name: str) -> str:
        return self.kernel.host.param_path(module, name)

    def read_param(self, module: str, name: str, default: str) -> str:
        return self.kernel.host.param(module, name, default)

    def write_param(self, module: str, name: str, value: str) -> None:
        self.kernel.host.set_param(module, name, value)


def state(kernel: MockKernel) -> VfioState:
    st = kernel.state.get(NAME)
    if st is None:
        raise KernelError(errno.ENODEV, "vfio subsystem not installed in this mock kernel")
    return st


# ---------------------------------------------------------------------------------------------
# IOMMU drivers (type1, spapr...) plug in here
# ---------------------------------------------------------------------------------------------


class IommuDriver(MockFile):
    """Base of a container's IOMMU backend (the kernel's vfio_iommu_driver_ops + iommu_data).

    Subclasses declare their ioctls with :func:`handles` exactly like files (dispatch by number,
    ENOTTY for unknown requests, as ``vfio_iommu_type1_ioctl`` does) and implement:

    * ``check_extension(cls, iommu, arg) -> int`` (classmethod; ``iommu`` is None before SET_IOMMU),
    * ``__init__(kernel, container, arg)`` (the driver's ``open``; raise KernelError to refuse),
    * ``attach_group(group)`` / ``detach_group(group)`` and ``release()``,
    * ``translate(iova, size, write) -> vaddr`` for the simulated devices' DMA.
    """

    def __init__(self, kernel: MockKernel, container: "ContainerFile", arg: int) -> None:
        super().__init__(kernel, container.path)
        self.container = container
        self.type = arg
        self.groups: list[MockGroup] = []

    @classmethod
    def check_extension(cls, iommu: "IommuDriver | None", arg: int) -> int:
        return 0

    def attach_group(self, group: "MockGroup") -> None:
        self.groups.append(group)

    def detach_group(self, group: "MockGroup") -> None:
        if group in self.groups:
            self.groups.remove(group)

    def translate(self, iova: int, size: int, write: bool) -> int:
        raise IommuFault(errno.EFAULT, "IOMMU driver has no translation")


def register_iommu_driver(kernel: MockKernel, driver: type[IommuDriver]) -> None:
    """Add an IOMMU driver (vfio_register_iommu_driver); SET_IOMMU tries them in order."""
    st = state(kernel)
    if driver not in st.iommu_drivers:
        st.iommu_drivers.append(driver)


def _int_arg(arg: Any) -> int:
    if isinstance(arg, int):
        return arg
    return int(ffi.cast("unsigned long", arg))


