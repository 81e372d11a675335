"""Huge pages for real (issue 12, B), in the intel guest on our kernel (``built``: it has
CONFIG_INTEL_IOMMU_DEBUGFS).

A 2 MiB hugetlbfs DmaBuffer (the guests reserve 32 x 2 MiB at boot), mapped through pyvfio at
the 2 MiB-aligned IOVA DmaMapper picks, is one 2 MiB leaf of the vIOMMU's page table: intel's
debugfs dump shows a PDE with the page-size bit (7) and no PTE for it, as
tools/testing/selftests/vfio/vfio_dma_mapping_test.c checks; a 4 KiB buffer is a 4 KiB leaf (a
PTE). Both VFIO paths: iommufd (the device's cdev) and the container (iommufd's compat container
on this kernel, type1v2; its type1 v1 mode would not use huge pages). edu then DMAs into the last
page of the huge buffer through the 2 MiB leaf.
"""

from __future__ import annotations

import pytest
from scenarios.intel_debugfs import PAGE_SIZE_BIT, leaf_of, parse, read_dump

HUGE = 2 << 20


@pytest.mark.guest(variants=["intel"], kernels=["built"])
@pytest.mark.parametrize("via", ["iommufd", "container"])
def test_hugetlbfs_buffer_is_one_2m_iommu_leaf_and_a_small_one_a_4k_leaf(guest_info, via):
    import pyvfio
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio.edu import EduDevice

    [edu_info] = [d for d in guest_info["devices"] if d["name"] == "edu" and d.get("bound")]
    bdf = edu_info["bdf"]
    with pyvfio.open(bdf, via=via, backend="real", dma_limit=1 << 28) as d, \
            DmaBuffer(HUGE, hugepages="hugetlbfs", backend="real") as huge, \
            DmaBuffer(4096, hugepages=None, backend="real") as small:
        backing = huge.backing()
        assert backing.kind == "hugetlbfs" and backing.page_size == HUGE and backing.huge, backing
        assert small.backing().page_size == 4096
        mh, ms = d.map(huge), d.map(small)
        assert mh.iova % HUGE == 0 and mh.size == HUGE, hex(mh.iova)
        text = read_dump(bdf)
        leaves = parse(text)
        excerpt = "\n".join(text.splitlines()[:40])
        leaf = leaf_of(leaves, mh.iova)
        assert leaf is not None, f"IOVA {mh.iova:#x} not in the dump:\n{excerpt}"
        assert leaf.iova == mh.iova and leaf.size == HUGE, (leaf, excerpt)
        assert leaf.pde & PAGE_SIZE_BIT and leaf.pte == 0, leaf
        inside = [l for l in leaves if mh.iova <= l.iova < mh.iova + HUGE]
        assert inside == [leaf], inside  # no 4 KiB leaves under it
        small_leaf = leaf_of(leaves, ms.iova)
        assert small_leaf is not None and small_leaf.size == 4096 and small_leaf.pte, small_leaf
        # the device reaches the end of the huge page through the 2 MiB leaf
        edu = EduDevice(d)
        edu.enable_bus_master()
        small.write(0, b"end of the huge page")
        edu.to_device(ms.iova, 20)
        edu.from_device(mh.iova + HUGE - 4096, 20)
        assert huge.read(HUGE - 4096, 20) == b"end of the huge page"
        d.unmap(mh)
        assert leaf_of(parse(read_dump(bdf)), mh.iova) is None
        d.unmap(ms)
