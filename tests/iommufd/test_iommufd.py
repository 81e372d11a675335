"""iommufd: the scenarios of tests/scenarios/iommufd.py on the mock kernel and on the real kernel
inside QEMU guests booted with pyvfio's iommufd kernel (vm/build_kernel.py: linux-source-6.12 with
IOMMUFD and VFIO_DEVICE_CDEV), under the intel, amd and virtio vIOMMUs, edu bound to vfio-pci by
the test bed's agent; both must give the same outcomes (errnos, kernel-chosen IOVAs, DMA bytes,
pinned and locked memory). Then what only the mock can set up (dirty-tracking IOMMU, missing
interrupt remapping, injected faults, the ioctl framing rules)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from scenarios import Env, FaultyBackend, scenario_id
from scenarios import iommufd as sc

from pyvfio import ioctls
from pyvfio.errors import (ArgumentError, InvalidArgumentError, NotFoundError,
                           PermissionDeniedError, PyvfioError)
from pyvfio.iommufd import IommuFd, open_device
from pyvfio.services.dma import DmaBuffer
from pyvfio.uapi import ffi
from pyvfio.testing import machine

PAGE = 4096


@pytest.fixture
def be(be):
    """conftest's mock kernel, checked for mock files left open before it is powered off."""
    yield be
    assert not machine(be).files, f"mock files left open: {machine(be).files}"


@pytest.mark.backends("mock", "intel", "amd", "virtio", iommufd=True)
@pytest.mark.parametrize("scenario", sc.ALL, ids=scenario_id)
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


def test_dirty_tracking_on_an_iommu_that_has_it(be, no_fd_leak):
    """With a dirty-tracking IOMMU (mock knob): HWPT_ALLOC(DIRTY_TRACKING), SET_DIRTY_TRACKING,
    edu writes mark exactly the written pages, NO_CLEAR keeps them, a plain read clears them."""
    machine(be).iommufd.dirty_tracking = True
    with IommuFd(backend=be) as fd, DmaBuffer(16 * PAGE) as buf:
        ioas = fd.ioas_alloc()
        dev = fd.bind("0000:00:03.0")
        assert dev.hw_info().dirty_tracking
        hwpt = fd.hwpt_alloc(dev.dev_id, ioas, dirty_tracking=True)
        dev.attach(hwpt)
        ioas.map(buf, 0x100000)
        edu = sc.edu_of(dev)
        edu.from_device(0x100000 + 3 * PAGE, 64)  # not tracking yet
        hwpt.set_dirty_tracking(True)
        assert hwpt.dirty_pages(0x100000, 16 * PAGE) == []
        edu.from_device(0x100000 + 5 * PAGE + 100, 64)
        edu.from_device(0x100000 + 9 * PAGE - 8, 16)  # straddles pages 8 and 9
        assert hwpt.dirty_pages(0x100000, 16 * PAGE, clear=False) == [5, 8, 9]
        words = hwpt.get_dirty_bitmap(0x100000, 16 * PAGE)
        assert words.dtype == np.uint64 and int(words[0]) == (1 << 5) | (1 << 8) | (1 << 9)
        assert hwpt.dirty_pages(0x100000, 16 * PAGE) == []
        with pytest.raises(ArgumentError):
            hwpt.get_dirty_bitmap(0x100000, 16 * PAGE, page_size=1 << 20)  # checked before the ioctl
        words = np.zeros(1, dtype=np.uint64)
        c = ffi.new("struct iommu_hwpt_get_dirty_bitmap *")
        c.size, c.hwpt_id, c.iova, c.length = ffi.sizeof(c[0]), hwpt.id, 0x100000, 16 * PAGE
        c.page_size, c.data = 1 << 20, int(ffi.cast("uintptr_t", ffi.from_buffer(words)))
        with pytest.raises(InvalidArgumentError):  # the kernel's own check
            fd.ioctl(ioctls.IOMMU_HWPT_GET_DIRTY_BITMAP, c)
        hwpt.set_dirty_tracking(False)
        edu.from_device(0x100000, 64)
        assert hwpt.dirty_pages(0x100000, 16 * PAGE) == []
        dev.detach()
        hwpt.destroy()


def test_bind_without_interrupt_remapping_eperm_then_allow_unsafe(be, no_fd_leak):
    machine(be).group(3).interrupt_remapping = False
    with IommuFd(backend=be) as fd:
        with pytest.raises(PermissionDeniedError) as ei:
            fd.bind("0000:00:03.0")
        assert "allow_unsafe_interrupts" in ei.value.hint
        assert not fd.devices
        machine(be).write_param("iommufd", "allow_unsafe_interrupts", "Y")
        dev = fd.bind("0000:00:03.0")
        assert any("MSI interrupts are not secure" in line for line in machine(be).dmesg)
        dev.close()


def test_open_device_unwinds_when_attach_fails(be, no_fd_leak):
    faulty = FaultyBackend(be, {"VFIO_DEVICE_ATTACH_IOMMUFD_PT": errno.ENOMEM})
    with pytest.raises(PyvfioError) as ei:
        open_device("0000:00:03.0", backend=faulty)  # type: ignore[arg-type]
    assert ei.value.errno == errno.ENOMEM
    assert "IOMMU_DESTROY" in faulty.ops  # the IOAS was destroyed on the way out
    assert not machine(be).files
    assert not machine(be).iommufd.bound  # the device can be bound again
    with open_device("0000:00:03.0", backend=be):
        pass


def test_close_order_with_everything_open(be, no_fd_leak):
    """IommuFd.close() with a bound+attached device, a HWPT and mappings: devices, HWPTs, IOASes,
    fd — no kernel object or pin left."""
    fd = IommuFd(backend=be)
    buf = DmaBuffer(PAGE)
    ioas = fd.ioas_alloc()
    dev = fd.bind("0000:00:03.0")
    hwpt = fd.hwpt_alloc(dev.dev_id, ioas)
    dev.attach(hwpt)
    m = ioas.map(buf, 0x100000)
    buf.close()
    assert not buf.released  # mapped: the memory stays
    assert machine(be).iommufd.pinned_vm == PAGE
    fd.close()
    assert m.closed and buf.released and hwpt.closed and ioas.closed and dev.closed
    assert machine(be).iommufd.pinned_vm == 0
    fd.close()  # idempotent


def test_framing_rules(be, no_fd_leak):
    """size below the minimum → EINVAL; non-zero bytes past the known struct → E2BIG; zeros past
    it are fine; reserved fields → EOPNOTSUPP; an unknown iommufd number → ENOTTY."""
    with IommuFd(backend=be) as fd:
        raw = ffi.new("char[]", 64)
        c = ffi.cast("struct iommu_ioas_alloc *", raw)
        c.size = 8  # out_ioas_id missing
        with pytest.raises(InvalidArgumentError):
            be.ioctl(fd.fileno(), ioctls.IOMMU_IOAS_ALLOC, c)
        c.size = 32
        raw[20] = b"\x01"
        with pytest.raises(PyvfioError) as ei:
            be.ioctl(fd.fileno(), ioctls.IOMMU_IOAS_ALLOC, c)
        assert ei.value.errno == errno.E2BIG
        raw[20] = b"\x00"
        be.ioctl(fd.fileno(), ioctls.IOMMU_IOAS_ALLOC, c)
        assert c.out_ioas_id == 1
        r = ffi.new("struct iommu_ioas_iova_ranges *")
        r.size, r.ioas_id = ffi.sizeof(r[0]), 1
        setattr(r, "__reserved", 1)
        with pytest.raises(PyvfioError) as ei:
            be.ioctl(fd.fileno(), ioctls.IOMMU_IOAS_IOVA_RANGES, r)
        assert ei.value.errno == errno.EOPNOTSUPP
        with pytest.raises(PyvfioError) as ei:
            be.ioctl(fd.fileno(), ioctls._IO(ioctls.IOMMUFD_TYPE, 0x99), c, op="?")
        assert ei.value.errno == errno.ENOTTY
        fd.destroy(1)


def test_kernel_chosen_iova_exhausted_enospc(be, no_fd_leak):
    with IommuFd(backend=be) as fd, DmaBuffer(PAGE) as a, DmaBuffer(PAGE) as b:
        ioas = fd.ioas_alloc()
        ioas.allow_iovas([(0x10000, 0x10FFF)])
        ioas.map(a)
        with pytest.raises(PyvfioError) as ei:
            ioas.map(b)
        assert ei.value.errno == errno.ENOSPC


def test_rlimit_mode_needs_cap_sys_resource(be, no_fd_leak):
    machine(be).iommufd.cap_sys_resource_override = False
    with IommuFd(backend=be) as fd:
        with pytest.raises(PermissionDeniedError) as ei:
            fd.rlimit_mode = 1
        assert "CAP_SYS_RESOURCE" in ei.value.hint
        with pytest.raises(ArgumentError):
            fd.rlimit_mode = 2


def test_unmapped_user_memory_efault_when_pinned(be, no_fd_leak):
    """Without a domain nothing is pinned (a map of unmapped memory succeeds); with one, the pin
    fails with EFAULT; attaching with such a mapping fails and leaves nothing attached."""
    import mmap

    with IommuFd(backend=be) as fd:
        ioas = fd.ioas_alloc()
        addr = be.mmap(PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        be.munmap(addr, PAGE)
        ioas.map_raw(addr, 0x100000, PAGE)
        dev = fd.bind("0000:00:03.0")
        with pytest.raises(PyvfioError) as ei:
            dev.attach(ioas)
        assert ei.value.errno == errno.EFAULT
        assert dev.pt_id is None
        assert [(r.start, r.end) for r in ioas.info().iova_ranges] == [(0, (1 << 64) - 1)]
        assert ioas.unmap_raw(0x100000, PAGE) == PAGE
        dev.attach(ioas)
        with pytest.raises(PyvfioError) as ei:
            ioas.map_raw(addr, 0x100000, PAGE)
        assert ei.value.errno == errno.EFAULT


def test_no_cdev_for_a_host_driver_device(be):
    from pyvfio.iommufd import cdev_path

    with pytest.raises(NotFoundError) as ei:
        cdev_path("0000:00:02.0", backend=be)
    assert "e1000e" in ei.value.hint


def test_rlimit_mode_mm_charges_vmlck(be, no_fd_leak):
    """RLIMIT_MODE 1 without CAP_IPC_LOCK: pins are charged to the process's locked_vm (what
    type1 uses) and refused over RLIMIT_MEMLOCK (in process, with the mock's capability and
    limit overrides; the setpriv child of scenario_memlock_enomem needs CAP_SYS_RESOURCE)."""
    st = machine(be).iommufd
    st.cap_sys_resource_override = True
    st.cap_ipc_lock_override = False
    task = machine(be).task
    base = task.locked_vm()
    task.rlimit_override = (base + (1 << 20)) // PAGE * PAGE
    with IommuFd(backend=be) as fd, DmaBuffer(256 << 10, hugepages=None) as s, \
            DmaBuffer(4 << 20, hugepages=None) as b:
        fd.rlimit_mode = 1
        ioas = fd.ioas_alloc()
        fd.bind("0000:00:03.0").attach(ioas)
        m = ioas.map(s, 0x100000)
        assert task.locked_vm() == base + s.size and st.user_locked_vm == 0
        with pytest.raises(PyvfioError) as ei:
            ioas.map(b, 0x1000000)
        assert ei.value.errno == errno.ENOMEM and "RLIMIT_MEMLOCK" in ei.value.hint
        assert task.locked_vm() == base + s.size and st.pinned_vm == s.size
        m.unmap()
        assert task.locked_vm() == base and st.pinned_vm == 0


@pytest.mark.parametrize("thp", [True, False])
def test_kernel_chosen_iova_alignment_follows_thp(be, thp, no_fd_leak):
    """What the kernels showed: with THP an 8 KiB 2 MiB-aligned buffer lands at 0x2000, without
    (pyvfio's iommufd guest kernel) at 0x1000; a 2 MiB buffer at 2 MiB only with THP."""
    machine(be).iommufd.thp = thp
    with IommuFd(backend=be) as fd, DmaBuffer(8192) as a, DmaBuffer(2 << 20) as b:
        ioas = fd.ioas_alloc()
        assert ioas.map(a).iova == (0x2000 if thp else 0x1000)
        assert ioas.map(b).iova == ((2 << 20) if thp else 0x3000)
        ioas.unmap_all()


@pytest.mark.parametrize("kind", ["amd", "virtio"])
def test_hwpt_scenario_as_other_viommus(be, kind, no_fd_leak):
    """The HWPT/HW_INFO scenario with the mock behaving like amd-iommu and virtio-iommu (what
    the amd and virtio guests showed on 6.12: type NONE; virtio's HWPT allocated before an attach
    has an empty aperture). The mock models 6.12's virtio-iommu, so the scenario is told it runs
    on 6.12; 7.2 (the virtio@built guest) gives the aperture at allocation."""
    machine(be).iommufd.set_kind(kind)
    sc.scenario_hwpt_and_hw_info(Env("mock", lambda: be, facts={"variant": kind,
                                                                 "guest": {"kernel": "6.12.95"}}))
