"""Real-kernel checks of the guest test bed itself (run inside QEMU guests by vm/pytest_plugin.py).

They check what the guest kernel did with the devices the agent bound, without needing the VFIO
core: the group node exists and matches sysfs, vfio-pci owns the device, VFIO_GROUP_GET_STATUS
says the group is viable, the vIOMMU is the one asked for, and without a vIOMMU there is no group.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
import struct

import pytest

PCI = "/sys/bus/pci/devices"
EDU_IDS = ("0x1234", "0x11e8")

# x86_64 numbers: _IO(';', 100 + n); used when pyvfio's uapi layer is not importable
VFIO_GET_API_VERSION = 0x3B64
VFIO_CHECK_EXTENSION = 0x3B65
VFIO_GROUP_GET_STATUS = 0x3B67
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_TYPE1v2_IOMMU = 3


def _link_name(path: str) -> str | None:
    return os.path.basename(os.readlink(path)) if os.path.islink(path) else None


def _bound(info: dict) -> list[dict]:
    return [d for d in info["devices"] if d.get("bound")]


def _group_status(path: str) -> int:
    """flags of VFIO_GROUP_GET_STATUS on the group node at path (through the seam if present)."""
    try:
        from pyvfio.ioctls import VFIO_GROUP_GET_STATUS as request
        from pyvfio.seam.real import RealBackend
        from pyvfio.uapi import ffi
    except ImportError:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            buf = bytearray(struct.pack("=II", 8, 0))
            fcntl.ioctl(fd, VFIO_GROUP_GET_STATUS, buf, True)
            return struct.unpack("=II", buf)[1]
        finally:
            os.close(fd)
    backend = RealBackend()
    fd = backend.open(path)
    try:
        status = ffi.new("struct vfio_group_status *")
        status.argsz = ffi.sizeof("struct vfio_group_status")
        backend.ioctl(fd, request, status, op="VFIO_GROUP_GET_STATUS")
        return int(status.flags)
    finally:
        backend.close(fd)


@pytest.mark.guest
def test_guest_info_describes_this_guest(guest_variant, guest_info):
    assert os.environ["PYVFIO_GUEST"] == guest_variant == guest_info["variant"]
    assert guest_info["kernel"] == os.uname().release
    names = [d["name"] for d in guest_info["devices"]]
    assert "edu" in names and len(names) >= 2, names
    for d in guest_info["devices"]:
        base = os.path.join(PCI, d["bdf"])
        with open(os.path.join(base, "vendor")) as f_v, open(os.path.join(base, "device")) as f_d:
            assert (f_v.read().strip(), f_d.read().strip()) == (d["vendor"], d["device"])


@pytest.mark.guest
def test_edu_sits_behind_the_requested_viommu(guest_variant, guest_info):
    (edu,) = [d for d in guest_info["devices"] if d["name"] == "edu"]
    # the device's `iommu` link names the IOMMU unit that translates its DMA
    unit = os.path.realpath(os.path.join(PCI, edu["bdf"], "iommu"))
    name = os.path.basename(unit)
    assert name in os.listdir("/sys/class/iommu"), unit
    if guest_variant == "intel":
        assert name.startswith("dmar"), unit
    elif guest_variant == "amd":
        assert name.startswith("ivhd"), unit
    else:  # virtio-iommu: the unit belongs to a virtio device driven by virtio_iommu
        driver = os.path.realpath(os.path.join("/sys/class/iommu", name, "device", "driver"))
        assert os.path.basename(driver) == "virtio_iommu", driver
    with open("/proc/cmdline") as f:
        cmdline = f.read().split()
    assert ("intel_iommu=on" in cmdline) == (guest_variant == "intel")
    assert ("amd_iommu=on" in cmdline) == (guest_variant == "amd")


@pytest.mark.guest
def test_every_bound_device_has_its_group_node(guest_info):
    bound = _bound(guest_info)
    assert any(d["name"] == "edu" for d in bound), guest_info
    for d in bound:
        base = os.path.join(PCI, d["bdf"])
        assert _link_name(os.path.join(base, "driver")) == "vfio-pci"
        group = int(_link_name(os.path.join(base, "iommu_group")))
        assert d["iommu_group"] == group
        node = f"/dev/vfio/{group}"
        assert d["vfio_dev"] == node
        st = os.stat(node)
        assert stat.S_ISCHR(st.st_mode)
        # the group's sysfs device list contains the device
        assert d["bdf"] in os.listdir(f"/sys/kernel/iommu_groups/{group}/devices")


@pytest.mark.guest
def test_bound_groups_are_viable(guest_info):
    for d in _bound(guest_info):
        flags = _group_status(d["vfio_dev"])
        assert flags & VFIO_GROUP_FLAGS_VIABLE, f"{d['name']} group {d['iommu_group']}: flags {flags:#x}"


@pytest.mark.guest
def test_container_api_version_and_type1v2():
    fd = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, VFIO_GET_API_VERSION) == 0
        assert fcntl.ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1
    finally:
        os.close(fd)


@pytest.mark.guest
def test_unbound_devices_keep_their_host_driver_in_their_own_group(guest_info):
    edu_group = next(d["iommu_group"] for d in guest_info["devices"] if d["name"] == "edu")
    others = [d for d in guest_info["devices"] if not d.get("bound")]
    assert others, "the session guest should have a device left on its host driver"
    for d in others:
        base = os.path.join(PCI, d["bdf"])
        assert _link_name(os.path.join(base, "driver")) == d["name"]  # e1000e, nvme
        group = int(_link_name(os.path.join(base, "iommu_group")))
        assert group != edu_group
        assert not os.path.exists(f"/dev/vfio/{group}")


@pytest.mark.guest(variants=["virtio"])
def test_virtio_iommu_gets_unsafe_interrupts_allowed(guest_info):
    with open("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts") as f:
        assert f.read().strip() == "Y"
    assert "vfio_iommu_type1" in guest_info["allow_unsafe_interrupts"]


@pytest.mark.guest(variants=["none"], kernels=["stable", "built"])
def test_without_viommu_edu_has_no_group(guest_info):
    edu = [d for d in guest_info["devices"] if (d["vendor"], d["device"]) == EDU_IDS]
    assert len(edu) == 1
    (d,) = edu
    base = os.path.join(PCI, d["bdf"])
    assert not os.path.exists(os.path.join(base, "iommu_group"))
    assert _link_name(os.path.join(base, "driver")) != "vfio-pci"
    assert not d["bound"] and d["iommu_group"] is None and "no IOMMU group" in d["bind_error"]
    assert sorted(os.listdir("/dev/vfio")) == ["vfio"]  # only the container node
    # (our cdev kernel too: /dev/vfio/devices appears with the first device cdev)
    assert os.listdir("/sys/kernel/iommu_groups") == []


@pytest.mark.guest(variants=["intel", "virtio"], iommufd=True)
def test_iommufd_kernel_gives_dev_iommu_and_device_cdevs(guest_variant, guest_info):
    assert guest_info["iommufd"] is True
    assert stat.S_ISCHR(os.stat("/dev/iommu").st_mode)
    (edu,) = [d for d in guest_info["devices"] if d["name"] == "edu"]
    assert edu["bound"] and edu["vfio_cdev"], edu
    assert stat.S_ISCHR(os.stat(edu["vfio_cdev"]).st_mode)
    cdev = os.path.basename(edu["vfio_cdev"])
    assert os.listdir(os.path.join(PCI, edu["bdf"], "vfio-dev")) == [cdev]
    # the legacy group interface is still there next to the cdev (VFIO_GROUP, VFIO_CONTAINER)
    assert os.path.exists(edu["vfio_dev"]) and os.path.exists("/dev/vfio/vfio")
    if guest_variant == "virtio":
        assert "iommufd" in guest_info["allow_unsafe_interrupts"]
