"""Discovery on fake trees, the mock kernel's tree, and the real /sys (pyudev vs tree reader)."""

from __future__ import annotations

import os

import pytest

from pyvfio.services.discovery import (
    DeviceNotFoundError,
    InvalidBdfError,
    PyudevSource,
    SysfsTreeSource,
    normalize_bdf,
    open_source,
    survey,
)
from pyvfio.testing import FakeHost, machine, sample_host


@pytest.fixture
def host(tmp_path):
    return sample_host(str(tmp_path))


def test_normalize_bdf():
    assert normalize_bdf("00:03.0") == "0000:00:03.0"
    assert normalize_bdf("0000:0A:1f.7") == "0000:0a:1f.7"
    for bad in ("", "00:03", "zz:03.0", "0000:00:20.0", "00:03.8", "0000:00:03.0/x"):
        with pytest.raises(InvalidBdfError):
            normalize_bdf(bad)


def test_tree_source_reads_every_attribute(host):
    src = SysfsTreeSource(host.paths.sys)
    devs = {d.bdf: d for d in src.devices()}
    assert list(devs) == sorted(devs)
    edu = devs["0000:00:03.0"]
    assert (edu.vendor, edu.device, edu.ids) == (0x1234, 0x11E8, "1234:11e8")
    assert edu.class_code == 0x00FF00 and edu.class_name == "Unclassified device"
    assert edu.driver == "vfio-pci" and edu.iommu_group == 2
    assert edu.reset_methods == () and not edu.resettable
    nic = devs["0000:00:02.0"]
    assert nic.reset_methods == ("flr", "bus") and nic.resettable and nic.numa_node is None
    pf, vf = devs["0000:02:00.0"], devs["0000:02:10.0"]
    assert pf.sriov_totalvfs == 7 and pf.sriov_numvfs == 1 and pf.virtfns == ("0000:02:10.0",)
    assert pf.numa_node == 1 and vf.physfn == "0000:02:00.0" and vf.is_vf and vf.driver is None
    assert devs["0000:03:00.0"].iommu_group is None
    assert devs["0000:00:00.0"].is_bridge


def test_groups_and_viability(host):
    src = SysfsTreeSource(host.paths.sys)
    groups = src.groups()
    assert sorted(groups) == [0, 1, 2, 3, 4, 5, 6]
    g4 = src.group(4)
    assert [d.bdf for d in g4.devices] == ["0000:01:00.0", "0000:01:00.1"]
    v = g4.viability
    assert not v.viable and {d.bdf for d in v.blockers} == {"0000:01:00.0", "0000:01:00.1"}
    assert "snd_hda_intel" in v.reason
    assert src.group(2).viability.viable
    assert src.group(6).viability.viable  # an unbound VF does not block
    with pytest.raises(DeviceNotFoundError) as ei:
        src.group(42)
    assert ei.value.errno == 2 and "42" in str(ei.value)


def test_pcieport_and_pci_stub_keep_a_group_viable(tmp_path):
    h = FakeHost(str(tmp_path))
    h.add_pci("0000:00:1c.0", 0x8086, 0xA110, class_code=0x060400, driver="pcieport", group=7)
    h.add_pci("0000:05:00.0", 0x10DE, 0x1B80, class_code=0x030000, driver="vfio-pci", group=7)
    h.add_pci("0000:05:00.1", 0x10DE, 0x10F0, class_code=0x040300, driver="pci-stub", group=7)
    assert SysfsTreeSource(h.paths.sys).group(7).viability.viable


def test_usability_reasons(host):
    rows = {r.device.bdf: r for r in survey(SysfsTreeSource(host.paths.sys))}
    assert rows["0000:00:03.0"].usability.usable
    assert "e1000e" in rows["0000:00:02.0"].usability.reason
    assert "no IOMMU group" in rows["0000:03:00.0"].usability.reason
    assert not rows["0000:01:00.0"].usability.usable


def test_device_lookup_errors(host):
    src = SysfsTreeSource(host.paths.sys)
    assert src.device("01:00.1").driver == "snd_hda_intel"
    with pytest.raises(DeviceNotFoundError):
        src.device("0000:09:00.0")
    with pytest.raises(InvalidBdfError):
        src.device("nope")


def test_empty_tree(tmp_path):
    src = SysfsTreeSource(str(tmp_path))
    assert src.devices() == [] and src.groups() == {}


def test_mock_kernel_tree_is_readable_and_follows_rebinds(mock_backend):
    src = open_source(mock_backend.sysfs_root)
    assert isinstance(src, SysfsTreeSource)
    devs = {d.bdf: d for d in src.devices()}
    assert devs["0000:00:03.0"].driver == "vfio-pci" and devs["0000:00:03.0"].iommu_group == 3
    assert devs["0000:00:03.0"].ids == "1234:11e8"
    assert devs["0000:00:02.0"].driver == "e1000e"
    assert not src.group(2).viability.viable
    machine(mock_backend).bind("0000:00:02.0", "vfio-pci")
    assert src.device("0000:00:02.0").driver == "vfio-pci" and src.group(2).viability.viable
    d = src.device("0000:00:03.0")
    assert d.numa_node is None and d.driver_override is None and d.revision == 0x10 and not d.resettable


@pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices") or not os.listdir("/sys/bus/pci/devices"),
                    reason="this machine has no PCI devices in /sys")
def test_pyudev_source_agrees_with_tree_reader_on_real_sysfs():
    udev = PyudevSource()
    tree = SysfsTreeSource("/sys")
    assert isinstance(open_source("/sys"), PyudevSource)
    a = [(d.bdf, d.ids, d.class_code, d.driver, d.iommu_group, d.numa_node, d.reset_methods) for d in udev.devices()]
    b = [(d.bdf, d.ids, d.class_code, d.driver, d.iommu_group, d.numa_node, d.reset_methods) for d in tree.devices()]
    assert a == b and a
    first = a[0][0]
    assert udev.device(first).bdf == first
    with pytest.raises(DeviceNotFoundError):
        udev.device("ffff:ff:1f.7")
