"""VFIO kernel objects: Container, Group, Device, the type1 IOMMU, and open_device().

Close order is mappings → device fds → group detach → group fds → container; every object is a
context manager and its parent closes it first.
"""

from __future__ import annotations

from .. import ioctls
from ..core.fd import Bundle
from ..core.iova import IovaRange
from ..core.mapping import DmaFlags, DmaMapping, ShortUnmapError
from ..seam import Backend, get_backend
from .spapr import SpaprTceIommu, SpaprTceV2Iommu  # registers the sPAPR TCE IOMMU classes
from .container import EXTENSIONS, IOMMU_TYPES, Container, IommuBase, register_iommu
from .device import Device
from .group import Group, GroupFlags, GroupStatus
from .type1 import Type1Info, Type1Iommu  # registers the type1 IOMMU class


class OpenedDevice(Bundle):
    """What :func:`open_device` returns: the ``container``, ``group``, ``iommu`` and ``device``
    it set up, owned together. ``close()`` (or the ``with`` block) closes the container, which
    unwinds the others in order."""

    def __init__(self, container: Container, group: Group, iommu: IommuBase, device: Device) -> None:
        self._root = self.container = container
        self.group = group
        self.iommu = iommu
        self.device = device

    def __repr__(self) -> str:
        return f"<OpenedDevice {getattr(self.device, 'name', '?')} group={self.group.number}>"


def open_device(bdf: str, *, backend: Backend | str | None = None,
                iommu_type: int | str = ioctls.VFIO_TYPE1v2_IOMMU) -> OpenedDevice:
    """Open PCI device ``bdf`` through VFIO in one call: container, its group (found through
    sysfs) attached, the IOMMU set (type1v2 by default), and the device fd.

    Every completed step is undone if a later one fails. Errors are those of each step
    (NotFoundError for no group, PermissionDeniedError for a non-viable group or missing
    interrupt remapping, with hints).

    Example (mock)::

        >>> from pyvfio.seam.mock import MockBackend
        >>> with open_device("0000:00:03.0", backend=MockBackend()) as d:  # doctest: +SKIP
        ...     d.iommu.info().iova_ranges[0]
        IovaRange(0x0, 0xfedfffff)
    """
    be = get_backend(backend)
    number = Group.number_of(bdf, backend=be)
    container = Container(backend=be)
    try:
        group = Group(number, backend=be)
        try:
            container.attach(group)
        except BaseException:
            group.close()
            raise
        iommu = container.set_iommu(iommu_type)
        device = group.open_device(bdf)
    except BaseException:
        container.close()
        raise
    return OpenedDevice(container, group, iommu, device)


__all__ = [
    "Container", "Group", "GroupFlags", "GroupStatus", "IommuBase", "IOMMU_TYPES", "EXTENSIONS",
    "register_iommu", "Type1Iommu", "Type1Info", "IovaRange", "DmaMapping", "DmaFlags",
    "ShortUnmapError", "OpenedDevice", "open_device", "Device", "SpaprTceIommu", "SpaprTceV2Iommu",
]
