"""Issue 12, item 7: pyvfio.open(bdf, via=...) gives one opened-device type for both VFIO paths,
and map(buffer) picks an IOVA inside the ranges, below the DMA limit, aligned to the largest IOMMU
page the buffer can use."""

from __future__ import annotations

import errno

import pytest

import pyvfio
from pyvfio.errors import ArgumentError, NotFoundError
from pyvfio.iommufd.ioas import Ioas
from pyvfio.seam.mock import MockBackend
from pyvfio.services import opener
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.vfio import Type1Iommu

BDF = "0000:00:03.0"
MiB = 1 << 20


@pytest.mark.parametrize(("via", "iommu_type"), [("container", Type1Iommu), ("iommufd", Ioas)])
def test_both_paths_one_type(via: str, iommu_type: type) -> None:
    with pyvfio.open(BDF, via=via, backend=MockBackend(), dma_limit=1 << 28) as d:  # type: ignore[arg-type]
        assert isinstance(d, pyvfio.OpenedVfioDevice) and d.via == via
        assert isinstance(d.iommu, iommu_type)
        edu = pyvfio.EduDevice(d)
        edu.enable_bus_master()
        efd, = d.device.enable_irq("MSI")
        with DmaBuffer(2 * MiB) as a, DmaBuffer(4096) as b:
            ma, mb = d.map(a), d.map(b)
            assert ma.iova % (2 * MiB) == 0 and ma.iova + a.size <= 1 << 28
            assert d.map(a) is ma  # the same buffer again: the live mapping
            a.write(0, b"round trip")
            edu.to_device(ma.iova, 10)
            edu.from_device(mb.iova, 10, irq=True)
            assert b.read(0, 10) == b"round trip"
            assert efd.read() >= 1  # the MSI fired
            d.unmap(mb)
            assert mb.closed
    assert d.closed


def test_auto_prefers_iommufd_then_the_container(monkeypatch) -> None:
    with pyvfio.open(BDF, backend=MockBackend()) as d:
        assert d.via == "iommufd"
    monkeypatch.setattr(opener, "_has_cdev", lambda bdf, be: False)
    with pyvfio.open(BDF, backend=MockBackend()) as d:
        assert d.via == "container"
    monkeypatch.setattr(opener, "_has_cdev", lambda bdf, be: True)

    def no_iommu(bdf, backend):
        raise NotFoundError(errno.ENOENT, op="open", path="/dev/iommu")

    monkeypatch.setattr(opener, "iommufd_open_device", no_iommu)
    with pyvfio.open(BDF, backend=MockBackend()) as d:
        assert d.via == "container"


def test_open_checks_arguments() -> None:
    with pytest.raises(ArgumentError, match="via"):
        pyvfio.open(BDF, via="vfio", backend=MockBackend())  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="dma_limit"):
        pyvfio.open(BDF, backend=MockBackend(), dma_limit=-1)


def test_map_at_a_fixed_iova_respects_the_limit() -> None:
    with pyvfio.open(BDF, via="container", backend=MockBackend(), dma_limit=1 << 28) as d, DmaBuffer(4096) as b:
        assert d.map(b, 0x300000).iova == 0x300000
        with pytest.raises(ArgumentError, match="DMA limit"):
            d.map(b, 1 << 28)


def test_dma_mapper_aligns_to_the_largest_page() -> None:
    with pyvfio.open_device(BDF, backend=MockBackend()) as d, DmaBuffer(4096) as small, \
            DmaBuffer(2 * MiB) as big:
        mapper = DmaMapper(d.iommu)
        assert mapper.map(small).iova == 0x100000  # 4 KiB buffers stay packed
        m = mapper.map(big)
        assert m.iova % (2 * MiB) == 0  # was 0x101000: 4 KiB aligned
