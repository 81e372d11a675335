"""Huge pages (issue 12, B) on the mock: DmaBuffer.backing() reads what really backs a buffer
(/proc/self/smaps: the mock kernel DMAs into this process's own pages), and both mapping paths
(DmaMapper, ``pyvfio.open(...).map``) put a buffer at an IOVA aligned to the largest IOMMU page
it can use. The guest twin (tests/vfio/test_hugepages_guest.py) reads the vIOMMU's page table."""

from __future__ import annotations

import pytest

import pyvfio
from pyvfio.services.dma import HUGE_2M, Backing, DmaBuffer
from pyvfio.util.proc import VmArea, read_vm_areas

PAGE = 4096


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0]


@pytest.mark.parametrize("via", ["container", "iommufd"])
def test_iovas_are_aligned_to_the_largest_iommu_page_the_buffer_can_use(be, via):
    with pyvfio.open("0000:00:03.0", via=via, backend=be, dma_limit=1 << 30) as d, \
            DmaBuffer(PAGE, backend=be) as small, DmaBuffer(HUGE_2M, backend=be) as huge, \
            DmaBuffer(2 * HUGE_2M, hugepages=None, align=PAGE, backend=be) as loose:
        ms, mh = d.map(small), d.map(huge)
        assert mh.iova % HUGE_2M == 0 and huge.addr % HUGE_2M == 0
        ml = d.map(loose)
        if loose.addr % HUGE_2M == 0:
            assert ml.iova % HUGE_2M == 0
        else:  # a 4 KiB-aligned address cannot use 2 MiB pages: no point in aligning the IOVA
            assert ml.iova % PAGE == 0
        assert ms.iova % PAGE == 0


def test_small_pages_are_reported_small(be):
    with DmaBuffer(8 * PAGE, hugepages=None, backend=be) as buf:
        b = buf.backing()
        assert (b.kind, b.page_size, b.huge_bytes, b.huge, b.largest_page) == ("small", PAGE, 0, False, PAGE)
        assert b.size == buf.size


@pytest.mark.skipif(_thp_mode() == "never", reason="transparent huge pages are off on this host")
def test_thp_buffer_is_backed_by_transparent_huge_pages(be):
    with DmaBuffer(2 * HUGE_2M, backend=be) as buf:  # MADV_HUGEPAGE, 2 MiB aligned, prefaulted
        b = buf.backing()
        # a request, not a promise: a fragmented host may give small pages; say so, then check
        if b.kind != "thp":
            pytest.skip(f"the kernel gave no THP to this buffer: {b}")
        assert b.page_size == PAGE and b.huge_bytes > 0 and b.largest_page == HUGE_2M


def test_backing_summarises_smaps_fields():
    hugetlb = VmArea(0x200000, 0x400000, "rw-p", 0, "00:10", 7, "/anon_hugepage (deleted)",
                     {"KernelPageSize": HUGE_2M, "Private_Hugetlb": HUGE_2M})
    b = Backing.of([hugetlb], 0x200000, HUGE_2M)
    assert (b.kind, b.page_size, b.huge, b.exact, b.largest_page) == ("hugetlbfs", HUGE_2M, True, True, HUGE_2M)
    thp = VmArea(0x200000, 0x800000, "rw-p", 0, "00:00", 0, "",
                 {"KernelPageSize": PAGE, "AnonHugePages": 3 * HUGE_2M})
    b = Backing.of([thp], 0x200000, HUGE_2M)  # the VMA is larger than the buffer
    assert (b.kind, b.huge_bytes, b.exact) == ("thp", HUGE_2M, False)
    assert Backing.of([], 0, PAGE).kind == "small"


def test_smaps_reader(tmp_path):
    proc = tmp_path / "1"
    proc.mkdir()
    (proc / "smaps").write_text(
        "00400000-00401000 r-xp 00000000 08:01 12 /bin/x\n"
        "Size:                  4 kB\n"
        "KernelPageSize:        4 kB\n"
        "VmFlags: rd ex mr mw me\n"
        "7f0000200000-7f0000400000 rw-s 00000000 00:10 99 /memfd:b (deleted)\n"
        "Size:               2048 kB\n"
        "KernelPageSize:     2048 kB\n"
        "Shared_Hugetlb:     2048 kB\n"
        "THPeligible:    0\n"
        "VmFlags: rd wr sh mr mw me ms ht\n")
    [a] = read_vm_areas(0x7F0000300000, PAGE, smaps=True, pid=1, proc=str(tmp_path))
    assert a.start == 0x7F0000200000 and a.shared and a.inode == 99
    assert a.fields["KernelPageSize"] == HUGE_2M and a.fields["THPeligible"] == 0 and "ht" in a.flags
    assert Backing.of([a], a.start, HUGE_2M).kind == "hugetlbfs"
    assert read_vm_areas(0, PAGE, pid=1, proc=str(tmp_path)) == []
    assert read_vm_areas(0, PAGE, pid=2, proc=str(tmp_path)) == []  # unreadable: nothing


def test_mapper_aligns_for_huge_pages_when_the_iommu_reports_only_its_granule(be, monkeypatch):
    """iommufd's compat container reports only its IOVA alignment in iova_pgsizes: the mapper
    still puts a 2 MiB-aligned 2 MiB buffer at a 2 MiB-aligned IOVA."""
    from pyvfio.mockkernel.vfio.type1 import Type1Iommu as MockType1
    from pyvfio.services.dma import DmaMapper
    from scenarios import type1 as sc

    monkeypatch.setattr(MockType1, "pgsize_bitmap", PAGE)
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(PAGE, backend=be) as small, \
            DmaBuffer(HUGE_2M, backend=be) as huge:
        mapper = DmaMapper(iommu)
        assert iommu.info().iova_pgsizes == PAGE
        assert mapper.map(small).iova == 0x100000
        assert mapper.map(huge).iova % HUGE_2M == 0
