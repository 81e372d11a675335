"""sPAPR map/unmap through one IOMMU object from several threads (issue 21, item 1), on the mock.

Eight threads map and unmap distinct IOVAs with a tiny switch interval; afterwards the mock
kernel's TCE tables must hold exactly the mappings pyvfio says are live, and no thread may have
seen "dictionary changed size during iteration" from ``check()`` walking :attr:`mappings`.
"""

from __future__ import annotations

import threading

import pytest

from pyvfio.errors import OverlapError

from pyvfio.services.dma import DmaBuffer
from pyvfio.testing import machine, power_backend
from pyvfio.vfio import Container, Group
from pyvfio.mockkernel.vfio import shutdown
from pyvfio.vfio.spapr import SpaprTceV2Iommu

THREADS = 8
ROUNDS = 40
PAGE = 4096



def _worker_iovas(t: int) -> list[int]:
    """Thread ``t``'s IOVAs: every THREADS-th page from page t (disjoint between threads)."""
    return [(t + THREADS * i) * PAGE for i in range(ROUNDS)]


@pytest.mark.parametrize("api", ["checked", "raw"])
def test_parallel_map_unmap_leaves_exact_tces(switchy, api):
    """Each thread maps ROUNDS pages of its own, then unmaps every other one; the mock's TCEs
    end up exactly the kept pages (and, checked API, so does ``iommu.mappings``)."""
    be = power_backend()
    try:
        with Container(backend=be) as c:
            c.attach(Group(0, backend=be))
            iommu = c.set_iommu("SPAPR_TCE_v2")
            assert isinstance(iommu, SpaprTceV2Iommu)
            buf = DmaBuffer(THREADS * ROUNDS * PAGE, hugepages=None)
            iommu.register(buf)
            errors: list[BaseException] = []
            start = threading.Barrier(THREADS)

            def worker(t: int) -> None:
                try:
                    start.wait()
                    handles = {}
                    for iova in _worker_iovas(t):  # IOVA == offset into buf
                        if api == "checked":
                            handles[iova] = iommu.map(buf, iova=iova, size=PAGE, offset=iova)
                        else:
                            iommu.map_dma(buf.addr + iova, iova, PAGE)
                    for iova in _worker_iovas(t)[1::2]:
                        if api == "checked":
                            iommu.unmap(handles[iova])
                        else:
                            iommu.unmap_dma(iova, PAGE)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert not errors, errors
            kept = sorted(iova for t in range(THREADS) for iova in _worker_iovas(t)[::2])
            window = machine(be).iommu(c).tables[0]
            assert {e: v[0] for e, v in window.tces.items()} == {i // PAGE: buf.addr + i for i in kept}
            if api == "checked":
                assert sorted(iommu.mappings) == kept
            else:
                for iova in kept:
                    iommu.unmap_dma(iova, PAGE)
    finally:
        shutdown(be.kernel)


def test_parallel_overlapping_maps_give_one_mapping(switchy):
    """Threads racing to map the same IOVA: exactly one mapping, the rest OverlapError (the
    overlap check and MAP_DMA are one step under the IOMMU's lock)."""
    be = power_backend()
    try:
        with Container(backend=be) as c:
            c.attach(Group(0, backend=be))
            iommu = c.set_iommu("SPAPR_TCE_v2")
            buf = DmaBuffer(THREADS * PAGE, hugepages=None)
            iommu.register(buf)
            for _ in range(20):
                won, lost, other = [], [], []
                start = threading.Barrier(THREADS)

                def worker(t: int) -> None:
                    start.wait()
                    try:
                        won.append(iommu.map(buf, iova=0, size=PAGE, offset=t * PAGE))
                    except OverlapError:
                        lost.append(t)
                    except BaseException as e:  # noqa: BLE001
                        other.append(e)

                threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                assert not other and len(won) == 1 and len(lost) == THREADS - 1
                assert machine(be).iommu(c).tables[0].tces[0][0] == won[0].vaddr
                won[0].unmap()
    finally:
        shutdown(be.kernel)
