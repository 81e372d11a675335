"""Mock VFIO: the machine topology, /dev/vfio/vfio (containers), /dev/vfio/N (groups) and the
IOMMU drivers behind a container (:mod:`.type1`, :mod:`.spapr`, with type1's dirty tracking in
:mod:`.dirty`).

* :mod:`.core`: per-kernel VFIO state, IOMMU groups and the IOMMU driver base;
* :mod:`.container` and :mod:`.group`: the two device nodes;
* :mod:`.topology`: which PCI functions exist, in which group, bound to which driver.
"""

from __future__ import annotations

from ..core import MockKernel
from .container import ContainerFile, open_container
from .core import (
    NAME,
    VFIO_FRIENDLY_DRIVERS,
    DeviceEntry,
    IommuDriver,
    IommuFault,
    MockIommuGroup,
    PciIdentity,
    VfioState,
    register_iommu_driver,
    state,
)
from .group import MockGroup, open_group
from .topology import add_device, bind_driver, default_machine, follow_rebind, interrupt_remapping, shutdown


def install(kernel: MockKernel, *, machine: bool = True) -> None:
    """Register /dev/vfio routes, the module parameters and (by default) the default machine."""
    st = VfioState(kernel)
    kernel.state[NAME] = st
    kernel.route(r"/dev/vfio/vfio", open_container)
    kernel.route(r"/dev/vfio/(\d+)", open_group)
    host = kernel.host
    host.add_driver("vfio-pci").add_module("vfio").add_module("vfio_pci")
    host.write("dev/vfio/vfio", "")
    host.rebind_hooks.append(lambda bdf, driver: follow_rebind(kernel, bdf, driver))
    st.write_param("vfio_iommu_type1", "dma_entry_limit", "65535")
    st.write_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
    st.write_param("vfio", "enable_unsafe_noiommu_mode", "N")
    if machine:
        default_machine(kernel)

__all__ = ["ContainerFile", "MockGroup", "DeviceEntry", "IommuDriver", "IommuFault", "MockIommuGroup",
           "PciIdentity", "VfioState", "VFIO_FRIENDLY_DRIVERS", "NAME", "register_iommu_driver", "state",
           "add_device", "bind_driver", "default_machine", "interrupt_remapping", "shutdown", "install"]
