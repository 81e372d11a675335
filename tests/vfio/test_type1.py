"""Container/group/type1 behaviour: the scenarios of tests/scenarios/type1.py on the mock kernel
and on the real kernel inside the QEMU guests (intel and amd vIOMMUs; edu bound to vfio-pci by the
test bed's agent), which must give the same outcomes (errnos, sizes, DMA bytes, locked memory);
plus what only the mock can set up (non-viable groups, missing interrupt remapping, injected
faults) and what only a real kernel shows (another process holding the group, virtio-iommu
without interrupt remapping)."""

from __future__ import annotations

import errno
import os

import pytest
from scenarios import CountingBackend, Env, FaultyBackend, locked_vm, scenario_id
from scenarios import type1 as sc

from pyvfio.errors import (BusyError, NotFoundError,
                           PermissionDeniedError, StateError)
from pyvfio.mockkernel.vfio.type1 import Type1Iommu as MockType1
from pyvfio import ioctls
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.services.iova import IovaAllocator, IovaExhaustedError
from pyvfio.vfio import Container, Group, IovaRange, open_device
from pyvfio.mockkernel.vfio import IommuFault
from pyvfio.testing import machine


@pytest.mark.backends("mock", "intel", "amd")
@pytest.mark.parametrize("scenario", sc.ALL, ids=scenario_id)
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


@pytest.fixture
def mock_end_env(be, backend_name, monkeypatch) -> Env:
    """The mock with an aperture up to 2^64-1 (like amd- and virtio-iommu) and the type1
    generation its flavour names (``mock-6.12``, ``mock-7.2``)."""
    version = backend_name.removeprefix("mock-")
    monkeypatch.setattr(MockType1, "kernel_version", tuple(int(x) for x in version.split(".")))
    machine(be).group(3).aperture = (0, (1 << 64) - 1)
    return Env("mock", lambda: be, facts={"kernel": version})


@pytest.mark.backends("mock-6.12", "mock-7.2", "amd", "virtio")
def test_end_of_space(request, backend_name, env, no_fd_leak):
    """Where kernels differ at the end of the IOVA space: 6.12 on the stable guests and the
    mock-6.12 twin, 7.2 on the newest guests and mock-7.2 (scenario_end_of_space says what)."""
    if backend_name.startswith("mock-"):
        env = request.getfixturevalue("mock_end_env")
    sc.scenario_end_of_space(env)


@pytest.mark.backends("intel", "amd", kernels=["built"])
@pytest.mark.parametrize("scenario", sc.COMPAT, ids=scenario_id)
def test_scenario_on_the_compat_container(scenario, env, no_fd_leak):
    """The same scenarios where /dev/vfio/vfio is iommufd's compat container (our kernel)."""
    assert not os.path.exists("/sys/module/vfio_iommu_type1")  # not the legacy driver
    scenario(env)


# -- mock-only situations ---------------------------------------------------------------------------


def test_non_viable_group_set_container_eperm(be, no_fd_leak):
    machine(be).bind("0000:00:02.0", None)  # the NIC leaves its host driver...
    nic = machine(be).entry("0000:00:02.0")
    # ...and joins edu's IOMMU group on a host driver: the group is no longer viable
    nic.group.devices.remove(nic)
    edu_group = machine(be).group(3)
    nic.group = edu_group
    edu_group.devices.append(nic)
    machine(be).bind("0000:00:02.0", "e1000e")
    with Container(backend=be) as c, Group(3, backend=be) as g:
        assert not g.status().viable
        with pytest.raises(PermissionDeniedError) as ei:
            c.attach(g)
        assert "viable" in ei.value.hint
        assert c.groups == [] and g.container is None


def test_group_of_host_driver_device_has_no_node():
    be = MockBackend()
    assert Group.number_of("0000:00:02.0", backend=be) == 2
    with pytest.raises(NotFoundError) as ei:
        Group(2, backend=be)
    assert "vfio-pci" in ei.value.hint
    with pytest.raises(NotFoundError):
        Group.number_of("0000:00:1f.0", backend=be)


def test_no_interrupt_remapping_eperm_then_allow_unsafe(be, no_fd_leak):
    machine(be).group(3).interrupt_remapping = False
    with Container(backend=be) as c:
        c.attach(Group(3, backend=be))
        with pytest.raises(PermissionDeniedError) as ei:
            c.set_iommu()
        assert "allow_unsafe_interrupts" in ei.value.hint and "interrupt remapping" in ei.value.hint
        assert any("No interrupt remapping support" in line for line in machine(be).dmesg)
        assert c.iommu is None
        machine(be).write_param("vfio_iommu_type1", "allow_unsafe_interrupts", "Y")
        c.set_iommu()


def test_open_device_undoes_steps_on_failure(be, no_fd_leak):
    faulty = FaultyBackend(be, {"VFIO_SET_IOMMU": errno.EPERM})
    with pytest.raises(PermissionDeniedError):
        open_device("0000:00:03.0", backend=faulty)
    assert "VFIO_SET_IOMMU!" in faulty.ops
    assert len(machine(be).files) == 0  # container and group closed
    # the group can be opened again: nothing holds it
    Group(3, backend=be).close()
    faulty = FaultyBackend(be, {"VFIO_GROUP_SET_CONTAINER": errno.EBUSY})
    with pytest.raises(BusyError):
        open_device("0000:00:03.0", backend=faulty)
    assert len(machine(be).files) == 0
    faulty = FaultyBackend(be, {"VFIO_GROUP_GET_DEVICE_FD": errno.ENODEV})
    with pytest.raises(NotFoundError):
        open_device("0000:00:03.0", backend=faulty)
    ops = faulty.ops
    assert ops.index("VFIO_GROUP_GET_DEVICE_FD!") < ops.index("VFIO_GROUP_UNSET_CONTAINER")  # unwound
    assert len(machine(be).files) == 0
    faulty = FaultyBackend(be, {"VFIO_GET_API_VERSION": errno.ENOTTY})
    with pytest.raises(OSError):
        open_device("0000:00:03.0", backend=faulty)
    assert len(machine(be).files) == 0
    with open_device("0000:00:03.0", backend=be) as d:  # and everything still works
        assert d.device.name == "0000:00:03.0"
    assert len(machine(be).files) == 0


def test_close_order_and_idempotence(be, no_fd_leak):
    counting = CountingBackend(be)
    c = Container(backend=counting)
    g = c.attach(Group(3, backend=counting))
    iommu = c.set_iommu()
    buf = DmaBuffer(4096)
    m = iommu.map(buf, 0x100000)
    base = locked_vm(be)
    c.close()
    c.close()
    assert m.closed and buf.mappings == () and g.closed and c.closed
    ops = counting.ops
    assert ops.index("VFIO_IOMMU_UNMAP_DMA") < ops.index("VFIO_GROUP_UNSET_CONTAINER")
    assert locked_vm(be) == base - 4096
    assert machine(be).files == {}
    buf.close()
    with pytest.raises(StateError):
        c.fileno()


def test_group_close_alone_releases_iommu_mappings(be, no_fd_leak):
    with Container(backend=be) as c:
        g = c.attach(Group(3, backend=be))
        iommu = c.set_iommu()
        with DmaBuffer(4096) as buf:
            m = iommu.map(buf, 0x100000)
            g.close()  # last group: mappings go first, then the detach
            assert m.closed and c.iommu is None and c.groups == []


def test_finalizer_closes_dropped_container():
    be = MockBackend()
    c = Container(backend=be)
    fd = c.fileno()
    assert fd in machine(be).files
    del c
    import gc

    gc.collect()
    assert fd not in machine(be).files


def test_enomem_via_simulated_task(be, no_fd_leak):
    task = machine(be).task
    task.cap_ipc_lock_override = False
    task.rlimit_override = task.locked_vm() + (64 << 10)
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(128 << 10, hugepages=None) as buf:
        before = task.locked_vm()
        with pytest.raises(OSError) as ei:
            iommu.map(buf, 0x100000)
        assert ei.value.errno == errno.ENOMEM and "RLIMIT_MEMLOCK" in ei.value.hint
        assert task.locked_vm() == before
        task.cap_ipc_lock_override = True  # accounted, never refused
        m = iommu.map(buf, 0x100000)
        assert task.locked_vm() == before + (128 << 10)
        m.unmap()


def test_update_vaddr_unsupported(monkeypatch, be):
    monkeypatch.setattr(MockType1, "update_vaddr_supported", False)
    sc.scenario_update_vaddr(Env("mock", lambda: be))


def test_translate_and_fault_logging():
    be = MockBackend()
    with sc.type1(be, "0000:00:03.0") as (_c, g, iommu), DmaBuffer(8192) as buf:
        iommu.map(buf, 0x100000, write=False)
        mgroup = machine(be).group(3).vfio
        buf.write(0, b"hello")
        assert mgroup.dma_read(0x100000, 5) == b"hello"
        with pytest.raises(IommuFault):
            mgroup.dma_write(0x100000, b"xx")
        assert buf.read(0, 5) == b"hello"
        with pytest.raises(IommuFault):
            mgroup.dma_read(0x900000, 4)
        faults = [l for l in machine(be).dmesg if l.startswith("DMAR:")]
        assert "DMA Write" in faults[0] and "0x100000" in faults[0]
        assert "DMA Read" in faults[1] and "0x900000" in faults[1]


def test_get_info_argsz_recall_and_cap_chain_guard():
    be = MockBackend()
    counting = CountingBackend(be)
    with sc.type1(counting, "0000:00:03.0") as (_c, _g, iommu):
        iommu.info()
        assert counting.ops.count("VFIO_IOMMU_GET_INFO") == 2  # too small, then the asked argsz
    from pyvfio.uapi import ffi
    from pyvfio.vfio.caps import CapChainError, walk_info_caps

    raw = ffi.new("char[]", 64)
    hdr = ffi.cast("struct vfio_info_cap_header *", raw + 24)
    hdr.id, hdr.next = 1, 24  # points at itself
    with pytest.raises(CapChainError):
        walk_info_caps(ffi.buffer(raw, 64)[:], 24, 24, op="t")
    hdr.next = 60  # header would run past the end
    with pytest.raises(CapChainError):
        walk_info_caps(ffi.buffer(raw, 64)[:], 24, 24, op="t")
    hdr.next = 8  # points back into the fixed struct
    with pytest.raises(CapChainError):
        walk_info_caps(ffi.buffer(raw, 64)[:], 24, 24, op="t")


def test_short_unmap_is_an_error():
    from pyvfio.vfio import ShortUnmapError

    be = MockBackend()
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(4096) as buf:
        m = iommu.map(buf, 0x100000)
        assert iommu.unmap_dma(0x100000, 4096) == 4096  # behind pyvfio's back
        with pytest.raises(ShortUnmapError):
            m.unmap()
        assert m.closed and buf.mappings == ()


def test_iova_allocator_ranges_limit_and_reuse():
    a = IovaAllocator([IovaRange(0, 0xFEDFFFFF), IovaRange(0xFEF00000, 0x7FFFFFFFFF)])
    x = a.alloc(0x1000)
    assert x == 0x100000
    big = a.alloc(0xFED00000 - 0x101000)  # fills the rest of the low range
    nxt = a.alloc(0x200000)
    assert nxt >= 0xFEF00000  # never inside the MSI window
    with pytest.raises(IovaExhaustedError):
        a.alloc(0x1000, limit=1 << 28)
    a.free(x)
    assert a.alloc(0x1000, limit=1 << 28) == x
    a.free(big)
    assert a.alloc(0x4000, align=0x200000) == 0x200000
    with pytest.raises(Exception):
        a.reserve(0xFEE00000, 0x1000)


def test_mapper_frees_iova_on_unmap():
    be = MockBackend()
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(4096) as buf:
        mp = DmaMapper(iommu, limit=1 << 28)
        m = mp.map(buf)
        iova = m.iova
        m.unmap()
        assert len(mp) == 0 and mp.lookup(buf) is None
        assert mp.map(buf).iova == iova
        mp.unmap_all()


def test_dmabuffer_alignment_and_access():
    with DmaBuffer(4096) as b:
        assert b.addr % (2 << 20) == 0 and b.size == 4096
        b.write(10, b"abc")
        assert b.read(10, 3) == b"abc" and bytes(b.view[10:13]) == b"abc"
        assert int(b.numpy()[10]) == ord("a")
    with DmaBuffer(5000, hugepages=None) as b:
        assert b.addr % 4096 == 0 and b.size == 8192
    assert b.closed


class _OldApiBackend(CountingBackend):
    def ioctl(self, fd, request, arg=0, *, op=None, hint=None):
        if request is ioctls.VFIO_GET_API_VERSION:
            return 1
        return super().ioctl(fd, request, arg, op=op, hint=hint)


def test_container_refuses_unknown_api_version_and_closes(be, no_fd_leak):
    from pyvfio.errors import UnsupportedError

    with pytest.raises(UnsupportedError):
        Container(backend=_OldApiBackend(be))
    assert machine(be).files == {}


def test_set_iommu_needs_a_group_before_the_syscall(be, no_fd_leak):
    counting = CountingBackend(be)
    with Container(backend=counting) as c:
        with pytest.raises(StateError):
            c.set_iommu()
        assert "VFIO_SET_IOMMU" not in counting.ops


def test_map_checks_before_syscall(be, no_fd_leak):
    from pyvfio.errors import AlignmentError, RangeError

    counting = CountingBackend(be)
    with sc.type1(counting, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(8192) as buf:
        iommu.info()
        n = len(counting.ops)
        with pytest.raises(AlignmentError):
            iommu.map(buf, 0x100800)
        with pytest.raises(AlignmentError):
            iommu.map(buf, 0x100000, size=100)
        with pytest.raises(RangeError):
            iommu.map(buf, 0x100000, size=3 * 4096)  # past the buffer
        with pytest.raises(RangeError):
            iommu.map(buf, (1 << 40))  # beyond the aperture
        assert len(counting.ops) == n


def test_concurrent_maps_from_threads_keep_their_arguments(be, no_fd_leak):
    import threading

    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(4 * 64 * 4096, hugepages=None) as buf:
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for i in range(64):
                    k = t * 64 + i
                    iommu.map(buf, 0x1000000 + k * 0x10000, size=4096, offset=k * 4096)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        entries = machine(be).group(3).vfio.iommu.entries()
        assert len(entries) == 256
        for e in entries:
            k = (e.iova - 0x1000000) // 0x10000
            assert e.vaddr == buf.addr + k * 4096 and e.size == 4096
        assert iommu.unmap_all() == 256 * 4096


# -- real-kernel-only situations (in the guests) ------------------------------------------------


@pytest.mark.backends("intel", "amd")
def test_group_busy_names_the_holding_process(env, no_fd_leak):
    """EBUSY on a group another process holds: the hint names that process (from /proc)."""
    import subprocess
    import sys

    from pyvfio.errors import BusyError
    from pyvfio.seam import get_backend
    from pyvfio.vfio import Group

    number = Group.number_of(env.bdf, backend=get_backend("real"))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; fd=os.open('/dev/vfio/{number}', os.O_RDWR); "
                               "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError) as ei:
            Group(number, backend=get_backend("real"))
        assert f"pid {holder.pid}" in ei.value.hint, ei.value.hint
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    Group(number, backend=get_backend("real")).close()  # free again once the holder is gone


@pytest.mark.guest(variants=["virtio"])
def test_set_iommu_eperm_without_interrupt_remapping(guest_info, no_fd_leak):
    """virtio-iommu has no interrupt remapping: with allow_unsafe_interrupts=N, VFIO_SET_IOMMU
    fails with EPERM and a hint naming interrupt remapping and allow_unsafe_interrupts; with Y
    it works. (The mock reproduces this in test_no_interrupt_remapping_eperm_then_allow_unsafe.)"""
    from pyvfio.errors import PermissionDeniedError
    from pyvfio.seam import get_backend
    from pyvfio.vfio import Container, Group

    edu = [d for d in guest_info["devices"] if d.get("name") == "edu" and d.get("bound")]
    assert edu, guest_info["devices"]
    be = get_backend("real")
    param = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
    saved = open(param).read().strip()
    try:
        with open(param, "w") as f:
            f.write("N\n")
        with Container(backend=be) as c:
            c.attach(Group.from_bdf(edu[0]["bdf"], backend=be))
            with pytest.raises(PermissionDeniedError) as ei:
                c.set_iommu()
            hint = ei.value.hint or ""
            assert "interrupt remapping" in hint and "allow_unsafe_interrupts" in hint, hint
            assert c.iommu is None
            with open(param, "w") as f:
                f.write("Y\n")
            iommu = c.set_iommu()
            assert iommu.info().iova_pgsizes
    finally:
        with open(param, "w") as f:
            f.write(f"{saved}\n")
