"""pyvfio: Python bindings and an operator CLI for Linux VFIO, iommufd and KVM memory interfaces.

Layers (arrows point down): cli → services → kernel objects → seam (real | mock) → uapi.

Quick start (the edu DMA round trip is in ``python -m pyvfio.demo``)::

    import pyvfio
    with pyvfio.open_device("0000:00:03.0") as d:      # container + group + type1v2 + device
        print(d.iommu.info().iova_ranges)
"""

from .errors import ArgumentError, PyvfioError, UnsupportedError
from .kvm import Kvm, MemSlot, Vm
from .seam import Backend, get_backend
from .services.discovery import find_devices, open_source
from .vfio import Container, Group, Type1Iommu, open_device

__version__ = "0.1.0"

__all__ = [
    "ArgumentError", "Backend", "Container", "Group", "Kvm", "MemSlot", "PyvfioError",
    "Type1Iommu", "UnsupportedError", "Vm", "get_backend", "open_device", "find_devices", "open_source", "__version__",
]
