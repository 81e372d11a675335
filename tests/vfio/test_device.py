"""Device-layer behaviour: the scenarios of tests/scenarios/device.py on the mock kernel and on
the real kernel inside the QEMU guests (intel and amd vIOMMUs; edu and the e1000e bound to
vfio-pci by the test bed's agent), which must give the same outcomes (flags, sizes, errnos,
interrupts on eventfds, config space); plus what only the mock can set up (sparse mmap areas,
byte-swapped edu, a device bus reset, DMA faults and QEMU's edu limits) and what only the real
kernel can do (stores through a BAR mapping)."""

from __future__ import annotations

import errno
import mmap

import pytest
from scenarios import Env, scenario_id
from scenarios import device as sc

from pyvfio.errors import ArgumentError, RangeError, UnsupportedError
from pyvfio.eventfd import EventFd
from pyvfio.seam.mock import MockBackend
from pyvfio.vfio import open_device
from pyvfio.vfio.caps import walk_info_caps
from pyvfio.vfio.device import Device, PciIrq
from pyvfio.vfio.edu import EduDevice, EduError
from pyvfio.mockkernel import MockKernel
from pyvfio.testing import machine, standalone_device

EDU, NIC = "0000:00:03.0", "0000:00:02.0"


@pytest.fixture
def be():
    """The default mock machine with the e1000e-like NIC bound to vfio-pci as well (as the guest
    tests bind it); powered off afterwards."""
    backend = MockBackend()
    machine(backend).bind(NIC, "vfio-pci")
    yield backend
    machine(backend).shutdown()


#: Both devices bound to vfio-pci in the guests
GUEST = {"bind": ["edu", "e1000e"]}


@pytest.fixture
def mock_env(be) -> Env:
    return Env("mock", lambda: be, bdf=EDU,
               facts={"devices": [{"name": "edu", "bdf": EDU}, {"name": "e1000e", "bdf": NIC}]})


@pytest.fixture
def guest_env(guest_info, guest_variant) -> Env:
    from pyvfio.seam import get_backend

    bound = [d for d in guest_info["devices"] if d.get("bound") and d.get("driver") == "vfio-pci"]
    names = {d["name"] for d in bound}
    if not {"edu", "e1000e"} <= names:
        pytest.fail(f"the guest agent did not bind edu and e1000e to vfio-pci: {guest_info['devices']}",
                    pytrace=False)
    edu = next(d for d in bound if d["name"] == "edu")
    return Env("real", lambda: get_backend("real"), bdf=edu["bdf"],
               facts={"variant": guest_variant, "guest": guest_info,
                      "devices": [{"name": d["name"], "bdf": d["bdf"]} for d in bound]})


@pytest.mark.backends("mock", "intel", "amd", **GUEST)
@pytest.mark.parametrize("scenario", sc.ALL, ids=scenario_id)
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)


# -- mock-only situations ---------------------------------------------------------------------





def test_sparse_mmap_areas(no_fd_leak):
    """A region with a SPARSE_MMAP capability: areas parsed, mmap only inside an area (pyvfio
    refuses before the syscall, the kernel with EINVAL), mmap_areas maps each."""
    dev = standalone_device("e1000e", sparse_msix=True)
    try:
        r = dev.region_info(3)
        assert not r.msix_mappable
        assert [(a.offset, a.size) for a in r.sparse_areas] == [(0x1000, 0x1000), (0x3000, 0x1000)]
        for off, size in ((0, None), (0x1000, 0x2000), (0x2000, None)):
            with pytest.raises(RangeError):
                dev.mmap(3, off, size)
        for off, length in ((0, 0x1000), (0x1000, 0x2000)):
            with pytest.raises(OSError) as ei:
                dev.backend.mmap(length, mmap.PROT_READ, mmap.MAP_SHARED, dev.fileno(), (3 << 40) + off)
            assert ei.value.errno == errno.EINVAL
        maps = dev.mmap_areas(3)
        assert [(m.offset, m.size) for m in maps] == [(0x1000, 0x1000), (0x3000, 0x1000)]
        dev.write(3, 0x3000, b"\x01\x02\x03\x04")
        assert maps[1].read(0, 4) == b"\x01\x02\x03\x04"  # mmap and pwrite share the bytes
        maps[0].write(4, b"\xaa")
        assert dev.read(3, 0x1004, 1) == b"\xaa"
    finally:
        dev.close()
    assert all(m.closed for m in maps)


def test_region_info_grows_argsz():
    """The first GET_REGION_INFO (fixed size) is answered with the size the caps need; pyvfio
    calls again, as with the real kernel."""
    be = MockBackend(MockKernel(subsystems=[]))
    calls = []
    orig = be.ioctl

    def spy(fd, request, arg=0, *, op=None, hint=None):
        r = orig(fd, request, arg, op=op, hint=hint)
        if (op or request.name) == "VFIO_DEVICE_GET_REGION_INFO":
            calls.append(int(arg.argsz))
        return r

    be.ioctl = spy  # type: ignore[method-assign]
    dev = standalone_device("e1000e", backend=be)
    try:
        assert dev.region_info(3).msix_mappable
        assert calls == [40, 40]  # 32 asked, 32 + 8-byte cap header needed
    finally:
        dev.close()


def test_cap_chain_guards():
    """Capability chains with a loop or an offset outside the answer are errors, not hangs."""
    hdr = lambda cid, nxt: cid.to_bytes(2, "little") + (1).to_bytes(2, "little") + nxt.to_bytes(4, "little")
    buf = bytes(32) + hdr(1, 40) + hdr(2, 32)
    with pytest.raises(OSError, match="loops"):
        walk_info_caps(buf, 32, 32)
    with pytest.raises(OSError, match="out of bounds"):
        walk_info_caps(bytes(32) + hdr(1, 400), 32, 32)
    with pytest.raises(OSError, match="out of bounds"):
        walk_info_caps(bytes(40), 8, 32)  # inside the fixed struct
    caps = walk_info_caps(bytes(32) + hdr(3, 40) + hdr(2, 0) + b"\x07\x00\x00\x00\x09\x00\x00\x00", 32, 32)
    assert [(c.id, c.offset, c.data) for c in caps] == [(3, 32, b""), (2, 40, bytes([7, 0, 0, 0, 9, 0, 0, 0]))]


def test_edu_big_endian_registers():
    """edu on a big-endian QEMU target reads byte-swapped; EduDevice detects it from the ident."""
    dev = standalone_device("edu", byteorder="big")
    try:
        assert dev.read_u32(0, 0) == 0xED000001
        edu = EduDevice(dev)
        assert edu.byteorder == "big" and edu.ident == 0x010000ED and edu.liveness(0x01020304)
        assert edu.factorial(6) == 720
    finally:
        dev.close()


def test_edu_rejects_what_qemu_aborts_on():
    """Transfers QEMU's edu aborts on (0 bytes, ending at the buffer end on 7.2, beyond the DMA
    mask) are refused before any register is written; the mock device stops like QEMU if forced."""
    dev = standalone_device("edu")
    try:
        edu = EduDevice(dev)
        for iova, size, off in ((0x1000, 0, 0), (0x1000, 4096, 0), (0x1000, 10, 4090), (1 << 28, 16, 0),
                                ((1 << 28) - 8, 16, 0)):
            with pytest.raises(RangeError):
                edu.dma(iova, size, to_ram=False, offset=off)
        assert dev.read_u32(0, 0x90) == 0 and dev.read_u32(0, 0x98) == 0
        with pytest.raises(ArgumentError):
            EduDevice(dev, max_transfer=0)
        # forcing a 4096-byte transfer through the registers stops the simulated device
        dev.config.enable_bus_master()
        dev.write_u32(0, 0x80, 0x1000)
        dev.write_u32(0, 0x88, 0x40000)
        dev.write_u32(0, 0x90, 4096)
        dev.write_u32(0, 0x98, 1)
        assert any("out of bounds" in line for line in machine(dev.backend).dmesg)
        with pytest.raises(EduError):
            EduDevice(dev)  # ident reads all-ones now
    finally:
        dev.close()


def test_edu_dma_without_iommu_domain_faults():
    """A device with no IOMMU domain behind it: the DMA is dropped and a fault logged."""
    dev = standalone_device("edu")
    try:
        edu = EduDevice(dev)
        edu.enable_bus_master()
        edu.from_device(0x100000, 16)
        assert any("DMAR" in line and "0x100000" in line for line in machine(dev.backend).dmesg)
    finally:
        dev.close()


def test_hot_reset_info_off_root_bus(no_fd_leak):
    """Off the root bus a bus reset exists: the dependent devices are listed (ENOSPC first)."""
    be = MockBackend(MockKernel(subsystems=[]))
    dev = standalone_device("e1000e", backend=be, name="0000:01:00.0")
    try:
        info = dev.hot_reset_info()
        assert [d.bdf for d in info.devices] == ["0000:01:00.0"]
    finally:
        dev.close()
        machine(be).shutdown()


def test_device_close_releases_everything(be, no_fd_leak):
    """Closing the device unmaps mappings and closes the eventfds it created; the kernel side
    drops its eventfd references and bus mastering; close twice is fine."""
    with open_device(EDU, backend=be) as od:
        dev: Device = od.device
        dev.config.enable_bus_master()
        efds = dev.enable_irq(PciIrq.MSI)
        m = dev.mmap(0)
        sim = machine(be).device(EDU)
        assert sim.triggers and sim.bus_master()
        dev.close()
        dev.close()
        assert m.closed and efds[0].closed and dev.closed
        assert sim.triggers == [] and not sim.bus_master()
    assert od.closed


def test_eventfd_basics(no_fd_leak):
    be = MockBackend(MockKernel(subsystems=[]))
    with EventFd(backend=be) as e:
        assert e.wait(0) == 0 and not e.poll(0)
        e.signal(3)
        assert e.poll(0) and e.wait(0) == 3 and e.read() == 0
        with pytest.raises(ArgumentError):
            e.signal(0)
    assert e.closed
    e.close()


def test_reset_unsupported_is_typed():
    dev = standalone_device("edu")
    try:
        with pytest.raises(UnsupportedError) as ei:
            dev.reset()
        assert ei.value.errno == errno.EOPNOTSUPP and ei.value.op == "VFIO_DEVICE_RESET"
    finally:
        dev.close()


def test_mmap_areas_unwinds_on_failure(no_fd_leak):
    """Mapping every sparse area is all or nothing: when the second mmap fails, the first
    mapping is undone."""
    dev = standalone_device("e1000e", sparse_msix=True)
    real_mmap = dev.backend.mmap
    calls = []

    def failing_mmap(length, prot, flags, fd=-1, offset=0):
        calls.append(offset)
        if len(calls) == 2:
            from pyvfio.errors import error_from_errno

            raise error_from_errno(errno.ENOMEM, op="mmap")
        return real_mmap(length, prot, flags, fd, offset)

    dev.backend.mmap = failing_mmap  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError) as ei:
            dev.mmap_areas(3)
        assert ei.value.errno == errno.ENOMEM and len(calls) == 2
        assert dev.mappings == ()
    finally:
        del dev.backend.mmap
        dev.close()


def test_edu_mmap_mode_closes_mapping_on_bad_ident(no_fd_leak):
    """EduDevice(use_mmap=True) on a device that is not an edu leaves no mapping behind."""
    dev = standalone_device("e1000e")
    try:
        with pytest.raises(EduError):
            EduDevice(dev, use_mmap=True)
        assert dev.mappings == ()
    finally:
        dev.close()


# -- real-kernel-only (in the guests) ----------------------------------------------------------


@pytest.mark.backends("intel", "amd", **GUEST)
def test_edu_registers_through_mmap(env, no_fd_leak):
    """Real kernel only (the mock cannot trap stores to a mapping): edu's registers through a
    BAR0 mapping behave as through pread/pwrite — liveness inverse, factorial, ident."""
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    with open_device(env.bdf) as od:
        with EduDevice(od.device, use_mmap=True) as edu:
            assert edu.ident == 0x010000ED
            assert edu.liveness(0x13572468) and edu.liveness(0)
            assert edu.factorial(10) == 3628800
            assert od.device.read_u32(0, 0x04) == ~0 & 0xFFFFFFFF  # pread sees the mmap store's effect
        assert od.device.mappings == ()
