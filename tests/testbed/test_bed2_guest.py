"""Real-kernel checks of what the second-generation test bed offers (run in QEMU guests).

Each check says which kernel generation does what (vm/pytest_plugin.py: ``stable`` is Debian's
6.12, ``newest`` the newest Debian series, ``built`` ours with iommufd, the compat container,
no-IOMMU mode, the mdev samples, IOMMUFD_TEST and the IOMMU debugfs):

- an igb PF bound to vfio-pci (with vfio-pci's ``enable_sriov``) creates VFs through
  ``sriov_numvfs``; each VF gets an IOMMU group of its own and vfio-pci binds it;
- hugetlbfs 2 MiB pages are reserved at boot;
- only ``built`` has /dev/iommu and /dev/vfio/devices, and answers IOMMU_TEST_CMD (a mock domain
  whose page table holds what IOMMU_IOAS_MAP put in it);
- on ``built``: an mtty mdev is created and removed through sysfs, intel's debugfs page-table
  dump shows a mapping made through pyvfio, and without a vIOMMU a no-IOMMU group appears once
  ``enable_unsafe_noiommu_mode`` is on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
import uuid

import pytest

PCI = "/sys/bus/pci/devices"
IGB_PF, IGB_VF = ("0x8086", "0x10c9"), ("0x8086", "0x10ca")
ALL_KERNELS = ["stable", "newest", "built"]

# tools/testing/selftests/iommu's iommufd_test.h (not a uAPI header): _IO(';', 0x80 + 32), and
# struct iommu_test_cmd {u32 size, op, id, __reserved; union {...}} of 72 bytes on 7.2
IOMMU_TEST_CMD = 0x3BA0
IOMMU_TEST_CMD_SIZE = 72
IOMMU_TEST_OP_MOCK_DOMAIN = 2
IOMMU_TEST_OP_MD_CHECK_MAP = 3
MOCK_APERTURE_START = 1 << 24


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _link_name(path: str) -> str | None:
    return os.path.basename(os.readlink(path)) if os.path.islink(path) else None


def _ids(bdf: str) -> tuple[str, str]:
    return _read(f"{PCI}/{bdf}/vendor"), _read(f"{PCI}/{bdf}/device")


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _param(path: str, value: str):
    """A module parameter set for the test, put back afterwards (the guest runs many tests)."""
    old = _read(path)
    _write(path, value)
    try:
        yield
    finally:
        _write(path, old)


# --- every kernel -------------------------------------------------------------------------------


@pytest.mark.guest(kernels=ALL_KERNELS)
def test_igb_vfs_get_their_own_groups_and_vfio_pci(guest_info):
    [pf] = [d for d in guest_info["devices"] if d["name"] == "igb"]
    assert pf["bound"], pf
    base = f"{PCI}/{pf['bdf']}"
    assert int(_read(f"{base}/sriov_totalvfs")) >= 2
    with _param("/sys/module/vfio_pci/parameters/enable_sriov", "Y"):
        _write(f"{base}/sriov_numvfs", "2")
        try:
            vfs = sorted(_link_name(f"{base}/{n}") for n in os.listdir(base) if n.startswith("virtfn"))
            assert len(vfs) == 2, os.listdir(base)
            groups = {pf["bdf"]: pf["iommu_group"]}
            for vf in vfs:
                assert _ids(vf) == IGB_VF
                assert _link_name(f"{PCI}/{vf}/physfn") == pf["bdf"]
                assert _wait_for(lambda: _link_name(f"{PCI}/{vf}/driver") == "vfio-pci"), vf
                groups[vf] = int(_link_name(f"{PCI}/{vf}/iommu_group"))
                assert _wait_for(lambda: os.path.exists(f"/dev/vfio/{groups[vf]}")), groups
            assert len(set(groups.values())) == 3, groups  # PF and each VF: a group of its own
        finally:
            _write(f"{base}/sriov_numvfs", "0")
    assert not any(n.startswith("virtfn") for n in os.listdir(base))


@pytest.mark.guest(variants=["intel"], kernels=ALL_KERNELS)
def test_hugetlbfs_pages_are_reserved(guest_kernel):
    from vm.guest import HUGEPAGES_2M

    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    assert int(info["Hugepagesize"].split()[0]) == 2048
    assert int(info["HugePages_Total"]) == HUGEPAGES_2M
    assert int(info["HugePages_Free"]) == HUGEPAGES_2M


@pytest.mark.guest(variants=["intel"], kernels=ALL_KERNELS)
def test_iommufd_nodes_exist_only_on_our_kernel(guest_kernel, guest_info):
    built = guest_kernel == "built"
    assert os.path.exists("/dev/iommu") is built
    assert os.path.isdir("/dev/vfio/devices") is built
    [edu] = [d for d in guest_info["devices"] if d["name"] == "edu"]
    assert (edu.get("vfio_cdev") is not None) is built, edu
    assert guest_info["kernel_generation"] == guest_kernel
    assert guest_info["kernel_pin"], guest_info  # which build ran is on record


# --- our kernel ---------------------------------------------------------------------------------


def _test_cmd(fd: int, op: int, obj: int, payload: bytes = b"") -> bytearray:
    buf = bytearray(struct.pack("=IIII", IOMMU_TEST_CMD_SIZE, op, obj, 0) + payload)
    buf += bytes(IOMMU_TEST_CMD_SIZE - len(buf))
    fcntl.ioctl(fd, IOMMU_TEST_CMD, buf, True)
    return buf


@pytest.mark.guest(variants=["intel"], iommufd=True)
def test_iommufd_test_mock_domain_holds_what_ioas_map_put_there():
    import errno

    from pyvfio import DmaBuffer
    from pyvfio.iommufd import IommuFd

    with IommuFd(backend="real") as ifd, DmaBuffer(2 * 4096, backend="real") as buf:
        ioas = ifd.ioas_alloc()
        out = _test_cmd(ifd.fileno(), IOMMU_TEST_OP_MOCK_DOMAIN, ioas.id)
        stdev_id, hwpt_id, idev_id = struct.unpack_from("=III", out, 16)
        assert stdev_id and hwpt_id and idev_id, (stdev_id, hwpt_id, idev_id)
        iova = MOCK_APERTURE_START
        m = ioas.map(buf, iova)
        # MD_CHECK_MAP walks the mock domain's page table: every page of [iova, iova+len) must
        # translate to uptr's pages, else EINVAL
        _test_cmd(ifd.fileno(), IOMMU_TEST_OP_MD_CHECK_MAP, hwpt_id,
                  struct.pack("=QQQ", iova, buf.size, buf.addr))
        with pytest.raises(OSError) as ei:  # the wrong backing is refused: the check is real
            _test_cmd(ifd.fileno(), IOMMU_TEST_OP_MD_CHECK_MAP, hwpt_id,
                      struct.pack("=QQQ", iova, 4096, buf.addr + 4096))
        assert ei.value.errno == errno.EINVAL
        m.unmap()
        ifd.destroy(stdev_id)


@pytest.mark.guest(variants=["intel"], iommufd=True)
def test_mtty_mdev_create_and_remove():
    parent = "/sys/devices/virtual/mtty/mtty/mdev_supported_types"
    types = sorted(os.listdir(parent))
    assert "mtty-2" in types, types
    before = int(_read(f"{parent}/mtty-2/available_instances"))
    u = str(uuid.uuid4())
    _write(f"{parent}/mtty-2/create", u)
    try:
        dev = f"/sys/bus/mdev/devices/{u}"
        assert os.path.isdir(dev)
        assert _link_name(f"{dev}/driver") == "vfio_mdev" or os.path.isdir(f"{dev}/vfio-dev"), \
            os.listdir(dev)
        group = _link_name(f"{dev}/iommu_group")
        assert group is not None and _wait_for(lambda: os.path.exists(f"/dev/vfio/{group}"))
        assert int(_read(f"{parent}/mtty-2/available_instances")) == before - 1
    finally:
        _write(f"/sys/bus/mdev/devices/{u}/remove", "1")
    assert not os.path.exists(f"/sys/bus/mdev/devices/{u}")
    assert int(_read(f"{parent}/mtty-2/available_instances")) == before


@pytest.mark.guest(variants=["intel"], iommufd=True)
def test_intel_debugfs_page_table_dump_shows_a_pyvfio_mapping(guest_info):
    import pyvfio
    from pyvfio import DmaBuffer

    if not os.path.isdir("/sys/kernel/debug/iommu"):
        os.system("mount -t debugfs none /sys/kernel/debug")
    [edu] = [d for d in guest_info["devices"] if d["name"] == "edu"]
    dump = f"/sys/kernel/debug/iommu/intel/{edu['bdf']}/domain_translation_struct"
    iova = 0x5A000000
    with pyvfio.open_device(edu["bdf"], backend="real") as opened, \
            DmaBuffer(4096, backend="real") as buf:
        m = opened.iommu.map(buf, iova)
        text = open(dump).read()
        pfns = set()
        for line in text.splitlines():
            head = line.split("|")[0].strip()
            with contextlib.suppress(ValueError):
                pfns.add(int(head, 16))
        assert iova >> 12 in pfns, text[:2000]
        m.unmap()
    text = open(dump).read() if os.path.exists(dump) else ""
    assert iova >> 12 not in {int(h, 16) for h in (ln.split("|")[0].strip() for ln in text.splitlines())
                             if h.startswith("0x")}


@pytest.mark.guest(variants=["none"], iommufd=True)
def test_noiommu_group_appears_when_enabled(guest_info):
    [edu] = [d for d in guest_info["devices"] if d["name"] == "edu"]
    bdf = edu["bdf"]
    assert _link_name(f"{PCI}/{bdf}/iommu_group") is None  # no vIOMMU: no group
    param = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
    with _param(param, "Y"):
        if _link_name(f"{PCI}/{bdf}/driver"):
            _write(f"{PCI}/{bdf}/driver/unbind", bdf)
        _write(f"{PCI}/{bdf}/driver_override", "vfio-pci")
        _write("/sys/bus/pci/drivers_probe", bdf)
        try:
            assert _link_name(f"{PCI}/{bdf}/driver") == "vfio-pci"
            group = _link_name(f"{PCI}/{bdf}/iommu_group")
            assert group is not None
            assert _wait_for(lambda: os.path.exists(f"/dev/vfio/noiommu-{group}")), os.listdir("/dev/vfio")
        finally:
            if _link_name(f"{PCI}/{bdf}/driver"):
                _write(f"{PCI}/{bdf}/driver/unbind", bdf)
            _write(f"{PCI}/{bdf}/driver_override", "\n")


@pytest.mark.guest(variants=["intel", "virtio"], kernels=ALL_KERNELS)
def test_edu_full_buffer_dma_above_4g(guest_info):
    """QEMU 10's edu takes a full 4096-byte transfer (7.2 aborted), and the bed's 64-bit DMA mask
    lets it reach an IOVA above 4 GiB (QEMU's default 28-bit mask would clamp it silently)."""
    from pyvfio import DmaBuffer
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    [edu_info] = [d for d in guest_info["devices"] if d["name"] == "edu"]
    high = 0x1_2340_0000
    with open_device(edu_info["bdf"], backend="real") as opened, \
            DmaBuffer(4096, backend="real") as src, DmaBuffer(4096, backend="real") as dst:
        edu = EduDevice(opened.device, max_transfer=4096, dma_mask=(1 << 64) - 1)
        edu.enable_bus_master()
        pattern = bytes((i * 13 + 7) & 0xFF for i in range(4096))
        src.write(0, pattern)
        dst.fill(0)
        ms = opened.iommu.map(src, high)
        md = opened.iommu.map(dst, high + 0x10000)
        edu.to_device(ms.iova, 4096)
        edu.from_device(md.iova, 4096)
        assert dst.read(0, 4096) == pattern
        ms.unmap()
        md.unmap()
