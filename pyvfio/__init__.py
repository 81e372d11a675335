"""pyvfio: drive Linux VFIO, iommufd and KVM memory from Python (CFFI, a mock kernel for tests).

The first hour, in the order you need it (everything here is in ``pyvfio.__all__``):

  find_devices(ids="1234:11e8")   PCI devices (.bdf .ids .driver .group) of the default backend
  open(bdf, via="auto")           the device by iommufd or the container: .map(buf) picks the
                                  IOVA; .device (regions, IRQs, config); .iommu
  open_device(bdf)                the container path only: container + group + type1v2 + device
  DmaBuffer(size)                 page-aligned memory for DMA (.read/.write/.numpy(); .backing():
                                  hugetlbfs/THP/small; DmaBuffer.from_memfd(size).alias())
  DmaMapper(iommu, limit=)        maps buffers at IOVAs it picks inside the IOMMU's ranges
  EduDevice(opened)               QEMU's edu: DMA (to_device/from_device), IRQs, factorial
  PciRegion.BAR0, PciIrq.MSI      region and interrupt indexes; names work too ("BAR0", "msi")
  DirtyTracker(iommu)             type1 dirty-page reports (start() first)
  Kvm() / Vm / GuestMemory        VMs, memslots (vm.add_memslot(GuestMemory, gpa)), dirty logs
  Container, Group, Type1Iommu    the same steps as open_device, one by one
  get_backend("mock")             the mock kernel (or PYVFIO_BACKEND=mock): the same code, no hardware
  open_source()                   the full sysfs view behind find_devices (groups, viability)

Errors: the kernel's refusals are PyvfioError (an OSError with .errno, .op, .path, .hint);
arguments refused before any syscall are ArgumentError (a ValueError), a wrong object state
StateError (with a .hint). The edu round trip is ``python -m pyvfio.demo``; every docstring
example runs on the mock kernel.

Example (mock)::

    >>> import pyvfio
    >>> [d.bdf for d in pyvfio.find_devices("1234:11e8")]
    ['0000:00:03.0']
    >>> with pyvfio.open_device("0000:00:03.0") as d, pyvfio.DmaBuffer(4096) as buf:
    ...     edu = pyvfio.EduDevice(d); edu.enable_bus_master()
    ...     m = d.iommu.map(buf, 0x100000)
    ...     buf.write(0, b"hi"); _ = edu.to_device(m.iova, 2); _ = edu.from_device(m.iova + 8, 2)
    ...     buf.read(8, 2)
    b'hi'
"""

from .errors import ArgumentError, PyvfioError, StateError, UnsupportedError
from .kvm import GuestMemory, Kvm, MemSlot, Vm
from .seam import Backend, get_backend
from .services.dirty import DirtyTracker
from .services.discovery import find_devices, open_source
from .services.dma import DmaBuffer, DmaMapper
from .services.opener import OpenedVfioDevice, open
from .vfio import Container, Group, Type1Iommu, open_device
from .vfio.device_info import PciIrq, PciRegion
from .vfio.edu import EduDevice

__version__ = "0.1.0"

__all__ = [
    # find and open
    "open", "OpenedVfioDevice", "find_devices", "open_device", "open_source", "get_backend", "Backend",
    # DMA
    "DmaBuffer", "DmaMapper", "EduDevice", "PciIrq", "PciRegion", "DirtyTracker",
    # KVM
    "Kvm", "Vm", "MemSlot", "GuestMemory",
    # step by step
    "Container", "Group", "Type1Iommu",
    # errors
    "PyvfioError", "ArgumentError", "StateError", "UnsupportedError",
    "__version__",
]
