"""pyvfio: Python bindings and an operator CLI for Linux VFIO, iommufd and KVM memory interfaces.

Layers (arrows point down): cli → services → kernel objects → seam (real | mock) → uapi.
"""

from .errors import ArgumentError, PyvfioError, UnsupportedError
from .seam import Backend, get_backend

__version__ = "0.1.0"

__all__ = ["ArgumentError", "Backend", "PyvfioError", "UnsupportedError", "get_backend", "__version__"]
