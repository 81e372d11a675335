"""iommufd: /dev/iommu (IommuFd), IO address spaces (Ioas), HWPTs, and VFIO devices through
their cdev (/dev/vfio/devices/vfioN) bound to an iommufd.

Close order: devices → HWPTs → IOASes (their mappings) → the /dev/iommu fd
(:meth:`IommuFd.close` does it).
"""

from __future__ import annotations

from .device import CDEV_DIR, IommufdDevice, OpenedIommufdDevice, cdev_path, open_device
from .ioas import IOMMU_PATH, HwCaps, HwInfo, HwInfoType, HwPagetable, Ioas, IoasInfo, IommuFd

__all__ = [
    "IommuFd", "Ioas", "IoasInfo", "HwPagetable", "HwInfo", "HwInfoType", "HwCaps",
    "IommufdDevice", "OpenedIommufdDevice", "cdev_path", "open_device", "IOMMU_PATH", "CDEV_DIR",
]
