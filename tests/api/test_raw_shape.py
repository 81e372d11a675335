"""Issue 12, item 4: one raw-call shape for every IOMMU: map (vaddr, iova, size), unmap (iova,
size), with the same keyword names on type1, sPAPR and the iommufd IOAS."""

from __future__ import annotations

import inspect

import pytest

from pyvfio.iommufd import IommuFd
from pyvfio.iommufd.ioas import Ioas
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer
from pyvfio.vfio import open_device
from pyvfio.vfio.spapr import SpaprTceIommu, SpaprTceV2Iommu
from pyvfio.vfio.type1 import Type1Iommu

MiB = 1 << 20


@pytest.mark.parametrize("fn", [Type1Iommu.map_dma, SpaprTceIommu.map_dma, SpaprTceV2Iommu.map_dma,
                                Ioas.map_raw, Ioas.map_dma])
def test_map_signature(fn) -> None:
    assert list(inspect.signature(fn).parameters)[1:4] == ["vaddr", "iova", "size"]


@pytest.mark.parametrize("fn", [Type1Iommu.unmap_dma, SpaprTceIommu.unmap_dma, Ioas.unmap_raw, Ioas.unmap_dma])
def test_unmap_signature(fn) -> None:
    assert list(inspect.signature(fn).parameters)[1:3] == ["iova", "size"]


def test_ioas_raw_map_takes_vaddr_iova_size() -> None:
    with IommuFd(backend=MockBackend()) as fd, DmaBuffer(2 * MiB) as buf:
        ioas = fd.ioas_alloc()
        # the call that used to map 2 MiB at IOVA 0x1000 now maps 4 KiB at 0x200000
        assert ioas.map_raw(buf.addr, 0x200000, 0x1000) == 0x200000
        assert ioas.unmap_raw(0x200000, 0x1000) == 0x1000
        assert ioas.map_dma(vaddr=buf.addr, iova=0x400000, size=2 * MiB) == 0x400000
        assert ioas.unmap_dma(iova=0x400000, size=2 * MiB) == 2 * MiB
        at = ioas.map_raw(buf.addr, None, 0x2000)  # the kernel picks the IOVA
        assert ioas.unmap_raw(at, 0x2000) == 0x2000


def test_type1_raw_map_same_keywords() -> None:
    with open_device("0000:00:03.0", backend=MockBackend()) as d, DmaBuffer(2 * MiB) as buf:
        d.iommu.map_dma(vaddr=buf.addr, iova=0x200000, size=0x1000)
        assert d.iommu.unmap_dma(iova=0x200000, size=0x1000) == 0x1000
