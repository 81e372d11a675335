"""type1, an iommufd IOAS and a shared DmaMapper driven from 8 threads (issue 21, item 4), on the
mock, with a tiny switch interval (the style of tests/spapr/test_threads.py).

Each thread maps ROUNDS pages of its own at IOVAs of its own, then unmaps every other one;
afterwards the kernel's mappings must be exactly the kept ones, and so must pyvfio's table.
"""

from __future__ import annotations

import functools

import pytest
from scenarios import run_threads

from pyvfio.iommufd import open_device as iommufd_open_device
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.testing import machine
from pyvfio.vfio import open_device

THREADS = 8
ROUNDS = 40
PAGE = 4096
BASE = 1 << 32
BDF = "0000:00:03.0"



def _pages(t: int) -> list[int]:
    """Thread ``t``'s page numbers (disjoint between threads)."""
    return [t + THREADS * i for i in range(ROUNDS)]


@pytest.mark.parametrize("api", ["checked", "raw"])
def test_type1_parallel_map_unmap(be, switchy, api):
    with open_device(BDF, backend=be) as od, DmaBuffer(THREADS * ROUNDS * PAGE, hugepages=None) as buf:
        iommu = od.iommu

        def worker(t: int) -> None:
            handles = {}
            for p in _pages(t):
                if api == "checked":
                    handles[p] = iommu.map(buf, BASE + p * PAGE, size=PAGE, offset=p * PAGE)
                else:
                    iommu.map_dma(buf.addr + p * PAGE, BASE + p * PAGE, PAGE)
            for p in _pages(t)[1::2]:
                if api == "checked":
                    iommu.unmap(handles[p])
                else:
                    assert iommu.unmap_dma(BASE + p * PAGE, PAGE) == PAGE

        run_threads([functools.partial(worker, t) for t in range(THREADS)])
        kept = sorted(p for t in range(THREADS) for p in _pages(t)[::2])
        assert machine(be).dma_mappings(od.container) == [(BASE + p * PAGE, PAGE, buf.addr + p * PAGE)
                                                          for p in kept]
        if api == "checked":
            assert sorted(iommu.mappings) == [BASE + p * PAGE for p in kept]
            assert len(buf.mappings) == len(kept)
        else:
            for p in kept:
                iommu.unmap_dma(BASE + p * PAGE, PAGE)
    assert machine(be).resources()["pinned"] == 0


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-iova", "kernel-iova"])
def test_ioas_parallel_map_unmap(be, switchy, fixed):
    with iommufd_open_device(BDF, backend=be) as od, \
            DmaBuffer(THREADS * ROUNDS * PAGE, hugepages=None) as buf:
        ioas = od.ioas
        got: dict[int, int] = {}

        def worker(t: int) -> None:
            handles = {}
            for p in _pages(t):
                iova = BASE + p * PAGE if fixed else None
                handles[p] = ioas.map(buf, iova, size=PAGE, offset=p * PAGE)
            for p in _pages(t)[1::2]:
                ioas.unmap(handles[p])
            for p in _pages(t)[::2]:
                got[p] = handles[p].iova

        run_threads([functools.partial(worker, t) for t in range(THREADS)])
        kept = sorted(got)
        areas = machine(be).ioas_areas(ioas)
        assert sorted((v, p) for p, v in got.items()) == [(iova, (va - buf.addr) // PAGE)
                                                           for iova, _n, va in areas]
        assert all(n == PAGE for _i, n, _v in areas) and len(areas) == len(kept)
        assert sorted(ioas.mappings) == sorted(got.values())
        if fixed:
            assert sorted(got.values()) == [BASE + p * PAGE for p in kept]
    assert machine(be).resources()["pinned_vm"] == 0


def test_shared_dmamapper(be, switchy):
    """Eight threads share one DmaMapper: each maps its own spans (some twice: the cache must
    hand back the same mapping), unmaps half; IOVAs never collide, the kernel holds exactly the
    kept mappings, the allocator exactly their blocks."""
    with open_device(BDF, backend=be) as od, DmaBuffer(THREADS * ROUNDS * PAGE, hugepages=None) as buf:
        mapper = DmaMapper(od.iommu)
        kept: dict[int, object] = {}

        def worker(t: int) -> None:
            mine = {}
            for p in _pages(t):
                m = mapper.map(buf, size=PAGE, offset=p * PAGE)
                assert mapper.map(buf, size=PAGE, offset=p * PAGE) is m
                mine[p] = m
            for p in _pages(t)[1::2]:
                mine[p].unmap()
            for p in _pages(t)[::2]:
                kept[p] = mine[p]

        run_threads([functools.partial(worker, t) for t in range(THREADS)])
        ms = sorted(kept.values(), key=lambda m: m.iova)  # type: ignore[attr-defined]
        assert machine(be).dma_mappings(od.container) == [(m.iova, PAGE, m.vaddr) for m in ms]  # type: ignore[attr-defined]
        assert sorted(mapper.allocator.allocated) == [m.iova for m in ms]  # type: ignore[attr-defined]
        assert len(mapper) == len(ms) == THREADS * ROUNDS // 2
        mapper.unmap_all()
        assert mapper.allocator.allocated == {} and machine(be).dma_mappings(od.container) == []
