"""Issue 12, item 1: names are accepted wherever numbers are, case-insensitively, and an unknown
name raises ArgumentError listing the valid names of that kind (one resolver: uapi.names)."""

from __future__ import annotations

import pytest

from pyvfio import ioctls
from pyvfio.errors import ArgumentError
from pyvfio.kvm import Kvm
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import standalone_device
from pyvfio.uapi.names import IOMMU_TYPES, IRQ_INDEXES, KVM_CAPS, NameTable
from pyvfio.vfio import Container, Group, Type1Iommu
from pyvfio.vfio.device_info import PciIrq


@pytest.fixture
def dev():
    d = standalone_device("edu")
    yield d
    d.close()


@pytest.mark.parametrize("name", ["type1v2", "TYPE1v2", "TYPE1V2", "VFIO_TYPE1v2_IOMMU", "vfio_type1v2_iommu"])
def test_set_iommu_by_name_any_case(name: str) -> None:
    with Container(backend=MockBackend()) as c:
        c.attach(Group(3, backend=c.backend))
        iommu = c.set_iommu(name)
        assert isinstance(iommu, Type1Iommu) and iommu.type == ioctls.VFIO_TYPE1v2_IOMMU


def test_set_iommu_unknown_name_lists_iommu_types_only() -> None:
    with Container(backend=MockBackend()) as c:
        c.attach(Group(3, backend=c.backend))
        with pytest.raises(ArgumentError) as ei:
            c.set_iommu("type3")
        msg = str(ei.value)
        assert "IOMMU type" in msg and "TYPE1v2" in msg and "SPAPR_TCE_v2" in msg
        assert "UNMAP_ALL" not in msg and "EEH" not in msg  # extensions are not IOMMU types


def test_check_extension_by_name() -> None:
    with Container(backend=MockBackend()) as c:
        assert c.check_extension("type1v2") == c.check_extension(ioctls.VFIO_TYPE1v2_IOMMU) > 0
        assert c.check_extension("unmap_all") == c.check_extension(ioctls.VFIO_UNMAP_ALL)


@pytest.mark.parametrize("name", ["MSI", "msi", "Msi", "VFIO_PCI_MSI_IRQ_INDEX", PciIrq.MSI, 1])
def test_enable_irq_by_name(dev, name) -> None:
    efds = dev.enable_irq(name)
    assert len(efds) == 1 and dev.irq_eventfds("msi") == efds
    assert dev.irq_info(name).index == ioctls.VFIO_PCI_MSI_IRQ_INDEX
    dev.disable_irq(name)
    assert dev.irq_eventfds(PciIrq.MSI) == []


def test_unknown_irq_name(dev) -> None:
    with pytest.raises(ArgumentError, match=r"interrupt index 'MSIY'.*INTX, MSI, MSIX, ERR, REQ"):
        dev.enable_irq("MSIY")
    with pytest.raises(ArgumentError):
        dev.irq_info(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "index"), [("BAR0", 0), ("bar0", 0), ("config", 7), ("CONFIG", 7),
                                             ("VFIO_PCI_CONFIG_REGION_INDEX", 7)])
def test_regions_by_name(dev, name: str, index: int) -> None:
    assert dev.region_info(name).index == index
    assert dev.read(name, 0, 4) == dev.read(index, 0, 4)


def test_region_name_reads_registers(dev) -> None:
    assert dev.read_u32("BAR0", 0) == 0x010000ED
    with pytest.raises(ArgumentError, match="BAR0, BAR1"):
        dev.read_u32("BAR6", 0)


@pytest.mark.parametrize("name", ["MSI", "msi", "PCI_CAP_ID_MSI"])
def test_find_capability_by_name(dev, name: str) -> None:
    cap = dev.config.find_capability(name)
    assert cap is not None and cap.id == 0x05 and cap.offset == 0x40


def test_find_capability_unknown_name(dev) -> None:
    assert dev.config.find_capability("MSI-X") is None  # a real name the edu lacks
    with pytest.raises(ArgumentError, match="PCI capability 'MSY'.*MSI-X"):
        dev.config.find_capability("MSY")


@pytest.mark.parametrize("name", ["BUS_MASTER", "bus_master", "VFIO_DEVICE_FEATURE_BUS_MASTER"])
def test_probe_feature_by_name(dev, name: str) -> None:
    assert dev.probe_feature(name, get=True) == dev.probe_feature(ioctls.VFIO_DEVICE_FEATURE_BUS_MASTER, get=True)


def test_unknown_feature_name(dev) -> None:
    with pytest.raises(ArgumentError, match="device feature 'FLY'.*MIGRATION"):
        dev.probe_feature("FLY")


@pytest.mark.parametrize("name", ["KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", "manual_dirty_log_protect2",
                                  "Manual-Dirty-Log-Protect2"])
def test_kvm_caps_by_name(name: str) -> None:
    with Kvm(backend=MockBackend()) as kvm, kvm.create_vm() as vm:
        want = vm.check_extension(ioctls.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        assert want and vm.check_extension(name) == want
        assert kvm.check_extension(name) == kvm.check_extension(ioctls.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        with pytest.raises(ArgumentError, match="KVM capability 'NO_SUCH'.*NR_MEMSLOTS"):
            vm.check_extension("NO_SUCH")


def test_one_resolver() -> None:
    assert IOMMU_TYPES.resolve("spapr_tce_v2") == ioctls.VFIO_SPAPR_TCE_v2_IOMMU
    assert IRQ_INDEXES.resolve("msi-x") == IRQ_INDEXES.resolve("MSIX") == 2
    assert KVM_CAPS.name_of(ioctls.KVM_CAP_NR_MEMSLOTS) == "NR_MEMSLOTS"
    with pytest.raises(ArgumentError):
        IRQ_INDEXES.resolve(True)  # a bool is not an index
    with pytest.raises(ValueError, match="collide"):
        NameTable("x", {"A_B": 1, "AB": 2})
