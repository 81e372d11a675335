"""iommufd: /dev/iommu (IommuFd), IO address spaces (Ioas), HWPTs, and VFIO devices through
their cdev (/dev/vfio/devices/vfioN) bound to an iommufd.

Close order: devices → HWPTs → IOASes (their mappings) → the /dev/iommu fd
(:meth:`IommuFd.close` does it).
"""

from __future__ import annotations

from ..core.iova import IovaRange
from ..core.mapping import DmaFlags, DmaMapping, ShortUnmapError
from .context import IOMMU_PATH, IommuFd, OpenedIommufdDevice, open_device
from .device import CDEV_DIR, IommufdDevice, cdev_path
from .ioas import HwCaps, HwInfo, HwInfoType, HwPagetable, Ioas, IoasInfo

__all__ = [
    "IommuFd", "Ioas", "IoasInfo", "HwPagetable", "HwInfo", "HwInfoType", "HwCaps",
    "IommufdDevice", "OpenedIommufdDevice", "cdev_path", "open_device", "IOMMU_PATH", "CDEV_DIR",
    "IovaRange", "DmaMapping", "DmaFlags", "ShortUnmapError",
]
