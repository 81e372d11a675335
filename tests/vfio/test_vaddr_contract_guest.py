"""VFIO_DMA_MAP_FLAG_VADDR on real kernels (issue 12, A), in the intel guest.

* ``stable`` (6.12) and ``newest`` (7.2), legacy type1 container: CHECK_EXTENSION(VFIO_UPDATE_VADDR)
  is 0 before SET_IOMMU and 1 after; a memfd buffer mapped at a second address takes over the
  mapping (invalidate + update), edu's DMA lands in the memory and reads back through both
  addresses, and an anonymous buffer is refused before any syscall (scenario_update_vaddr).
* ``built`` (our 7.2 with iommufd's VFIO compat container): the extension is 0 whatever the state
  (drivers/iommu/iommufd/vfio_compat.c), and pyvfio refuses update_vaddr with UnsupportedError
  before the DMA ioctls, leaving the mapping working.
"""

from __future__ import annotations

import pytest
from scenarios import guest_env
from scenarios import type1 as sc

PAGE = 4096


def _edu(guest_info):
    [edu] = [d for d in guest_info["devices"] if d["name"] == "edu" and d.get("bound")]
    return edu["bdf"]


@pytest.mark.guest(variants=["intel"], kernels=["stable", "newest"])
def test_update_vaddr_to_a_second_mapping_of_the_same_memfd(guest_info, guest_variant):
    from pyvfio.vfio import Container, Group

    bdf = _edu(guest_info)
    with Container(backend="real") as c:
        c.attach(Group.from_bdf(bdf, backend="real"))
        assert c.check_extension("UPDATE_VADDR") == 0  # no IOMMU set: asked of no driver
        c.set_iommu("TYPE1v2")
        assert c.check_extension("UPDATE_VADDR") == 1  # legacy type1 with no emulated device
    sc.scenario_update_vaddr(guest_env(guest_info, guest_variant))


@pytest.mark.guest(variants=["intel"], kernels=["built"])
def test_update_vaddr_is_refused_on_the_iommufd_compat_container(guest_info):
    from pyvfio.errors import UnsupportedError
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    bdf = _edu(guest_info)
    with open_device(bdf, backend="real") as opened, \
            DmaBuffer.from_memfd(PAGE, backend="real") as a, a.alias() as b, \
            DmaBuffer(PAGE, backend="real") as dst:
        c = opened.iommu.container
        assert c.check_extension("TYPE1v2") == 1  # the compat container does type1v2...
        assert c.check_extension("UPDATE_VADDR") == 0  # ...but never VADDR updates
        m = opened.iommu.map(a, 0x600000)
        with pytest.raises(UnsupportedError) as ei:
            opened.iommu.update_vaddr(m, b)
        assert "VFIO_UPDATE_VADDR" in str(ei.value) and "unmap and map again" in ei.value.hint
        assert m.buffer is a and m.held == ()
        # untouched: the device still reaches the memory through the mapping
        edu = EduDevice(opened.device)
        edu.enable_bus_master()
        b.write(0, b"compat")
        md = opened.iommu.map(dst, 0x700000)
        edu.to_device(m.iova, 6)
        edu.from_device(md.iova, 6)
        assert dst.read(0, 6) == b"compat"
        md.unmap()
        m.unmap()
