"""One opener for both VFIO paths: :func:`open` returns an :class:`OpenedVfioDevice` whatever
the path (the legacy container + group + type1, or iommufd + the device cdev + an IOAS).

``via="auto"`` takes iommufd when the device has a VFIO cdev (sysfs ``vfio-dev/``) and
/dev/iommu opens, else the container. ``map(buffer)`` places a buffer at an IOVA it picks:
inside the IOMMU's usable ranges, ending at or below ``dma_limit`` (the device's DMA reach),
aligned to the largest IOMMU page size the buffer can use (so a 2 MiB-aligned 2 MiB buffer can
be one IOMMU entry).

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.services.dma import DmaBuffer
    >>> with open("0000:00:03.0", backend=MockBackend(), dma_limit=1 << 28) as d, DmaBuffer(2 << 20) as buf:
    ...     m = d.map(buf)
    ...     (d.via, hex(m.iova), m.iova % (2 << 20))
    ('iommufd', '0x200000', 0)
"""

from __future__ import annotations

from typing import Any, Literal

from ..core.fd import Closeable
from ..errors import ArgumentError, NotFoundError
from ..iommufd import open_device as iommufd_open_device
from ..iommufd.device import cdev_path
from ..seam import Backend, get_backend
from ..vfio import open_device as vfio_open_device
from ..vfio.device import Device
from .dma import DmaMapper

__all__ = ["open", "OpenedVfioDevice", "VIAS"]

VIAS = ("auto", "container", "iommufd")
Via = Literal["auto", "container", "iommufd"]


class OpenedVfioDevice(Closeable):
    """An opened VFIO device, by either path: ``device`` (regions, IRQs, config), ``iommu`` (a
    Type1Iommu or an Ioas, both with ``map``/``unmap``/``map_dma``), ``via`` ("container" or
    "iommufd"), ``dma_limit``, and ``opened`` (the path's own bundle: ``container``/``group`` or
    ``iommufd``/``ioas``/``bound``). ``close()`` (or the ``with`` block) unwinds everything.

    Threads: ``map``/``unmap`` may run concurrently (the mapper locks); ``close`` runs alone.
    """

    def __init__(self, opened: Any, via: str, dma_limit: int | None) -> None:
        self.opened = opened
        self.via = via
        self.device: Device = opened.device
        self.iommu = opened.iommu
        self.dma_limit = dma_limit
        self.mapper = DmaMapper(self.iommu, limit=dma_limit)

    @property
    def closed(self) -> bool:
        return bool(self.opened.closed)

    def map(self, buffer: Any, iova: int | None = None, *, read: bool = True, write: bool = True) -> Any:
        """Map ``buffer`` (a DmaBuffer or an object with ``.addr``/``.size``) for the device and
        return the DmaMapping (its ``iova`` is where the device reaches it).

        With ``iova=None`` the IOVA is picked inside the usable ranges, below ``dma_limit``,
        aligned to the largest IOMMU page size the buffer's address and size allow; mapping the
        same buffer with the same access again returns the live mapping. With ``iova`` the
        buffer goes exactly there (checked against the ranges first). Issues VFIO_IOMMU_MAP_DMA
        or IOMMU_IOAS_MAP; errors as theirs (ENOMEM: RLIMIT_MEMLOCK, see the hint).

        Safety: the device may read (``read``) and write (``write``) the memory until unmapped;
        the mapping keeps the buffer alive.
        """
        if iova is None:
            return self.mapper.map(buffer, read=read, write=write)
        if self.dma_limit is not None and iova + int(buffer.size) > self.dma_limit:
            raise ArgumentError(f"IOVA {iova:#x}+{int(buffer.size):#x} ends above the device's DMA "
                                f"limit {self.dma_limit:#x}")
        return self.iommu.map(buffer, iova, read=read, write=write)

    def unmap(self, mapping: Any) -> None:
        """Unmap ``mapping`` (VFIO_IOMMU_UNMAP_DMA / IOMMU_IOAS_UNMAP of exactly it)."""
        self.iommu.unmap(mapping)

    def close(self) -> None:
        """Unmap everything and close the device, then the container or iommufd. Idempotent."""
        self.opened.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"iommu={type(self.iommu).__name__}"
        return f"<OpenedVfioDevice {self.device.name} via {self.via} {state}>"


def _has_cdev(bdf: str, backend: Backend) -> bool:
    try:
        cdev_path(bdf, backend=backend)
    except NotFoundError:
        return False
    return True


def open(bdf: str, *, via: Via = "auto", backend: Backend | str | None = None,  # noqa: A001
         dma_limit: int | None = None) -> OpenedVfioDevice:
    """Open PCI device ``bdf`` for DMA by either VFIO path; returns an :class:`OpenedVfioDevice`.

    ``via``: "container" (VFIO_GROUP_SET_CONTAINER + VFIO_SET_IOMMU type1v2 +
    VFIO_GROUP_GET_DEVICE_FD), "iommufd" (IOMMU_IOAS_ALLOC + VFIO_DEVICE_BIND_IOMMUFD +
    VFIO_DEVICE_ATTACH_IOMMUFD_PT), or "auto": iommufd when the device has a VFIO cdev and
    /dev/iommu opens, else the container. ``dma_limit``: the device's DMA reach (edu: 1 << 28);
    :meth:`OpenedVfioDevice.map` keeps IOVAs below it. Errors: those of each step (with hints);
    ArgumentError for an unknown ``via``.
    """
    if via not in VIAS:
        raise ArgumentError(f"via {via!r}: use one of {', '.join(VIAS)}")
    if dma_limit is not None and (isinstance(dma_limit, bool) or not isinstance(dma_limit, int)
                                  or dma_limit <= 0):
        raise ArgumentError(f"dma_limit {dma_limit!r} must be a positive int (e.g. 1 << 28)")
    be = get_backend(backend)
    if via == "auto":
        if _has_cdev(bdf, be):
            try:
                return OpenedVfioDevice(iommufd_open_device(bdf, backend=be), "iommufd", dma_limit)
            except NotFoundError:  # no /dev/iommu (iommufd not loaded): the legacy path
                pass
        via = "container"
    if via == "iommufd":
        return OpenedVfioDevice(iommufd_open_device(bdf, backend=be), "iommufd", dma_limit)
    return OpenedVfioDevice(vfio_open_device(bdf, backend=be), "container", dma_limit)

