"""ioeventfd/irqfd bindings, the KVM VFIO device, and memslots over an mmap'd VFIO region."""

from __future__ import annotations

import os

import pytest

from pyvfio import ioctls as I
from pyvfio.errors import ArgumentError, ExistsError, InvalidArgumentError, NotFoundError, StateError
from pyvfio.kvm import GuestMemory, Kvm, guestcode
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import machine

pytestmark = pytest.mark.backends("mock", "kvm")

PAGE = 4096


def _run(vm, code, prog):
    code.write(0x1000, prog)
    v = vm.vcpus.get(0) or vm.create_vcpu(0)
    v.setup_real_mode(0x1000)
    return v.run_until_halt()


def test_pio_ioeventfd_takes_the_guest_write(vm):
    code = GuestMemory.anonymous(0x10000, backend=vm.backend)
    vm.add_memslot(code, 0)
    prog = guestcode.out(0x20, 7) + guestcode.out(0x21, 1) + guestcode.out(0x20, 9) + guestcode.HLT
    # without an ioeventfd every OUT exits to userspace
    assert [(e.port, e.data) for e in _run(vm, code, prog)] == [(0x20, b"\x07"), (0x21, b"\x01"), (0x20, b"\x09")]
    with vm.ioeventfd(0x20, 1, pio=True) as ev:
        ios = _run(vm, code, prog)
        assert [(e.port, e.data) for e in ios] == [(0x21, b"\x01")]      # 0x20 stayed in the kernel
        assert ev.read() == 2                                             # signalled twice
    with vm.ioeventfd(0x20, 1, pio=True, datamatch=9) as ev:
        ios = _run(vm, code, prog)
        assert [(e.port, e.data) for e in ios] == [(0x20, b"\x07"), (0x21, b"\x01")]
        assert ev.read() == 1
    # deassigned on close: OUTs exit again
    assert len(_run(vm, code, prog)) == 3
    vm.close()
    code.close()


def test_mmio_ioeventfd_takes_a_store_to_unbacked_gpa(vm):
    from pyvfio.kvm import VcpuExitError

    code = GuestMemory.anonymous(0x10000, backend=vm.backend)
    vm.add_memslot(code, 0)
    prog = guestcode.write_pages([0xD0000]) + guestcode.HLT
    with pytest.raises(VcpuExitError, match="MMIO"):
        _run(vm, code, prog)
    with vm.ioeventfd(0xD0000, 1) as ev:
        _run(vm, code, prog)
        assert ev.read() == 1
    vm.close()
    code.close()


def test_ioeventfd_argument_checks_and_errors(vm):
    with pytest.raises(ArgumentError):
        vm.ioeventfd(0x1000, 3)
    with pytest.raises(ArgumentError):
        vm.ioeventfd(0x1000, 0, datamatch=1)
    with pytest.raises(ArgumentError):
        vm.ioeventfd(0xFFFF, 4, pio=True)
    a = vm.ioeventfd(0x1000, 4)
    with pytest.raises(ExistsError) as info:
        vm.ioeventfd(0x1000, 4)
    assert info.value.op == "KVM_IOEVENTFD" and info.value.hint
    a.close()
    a.close()  # idempotent
    vm.ioeventfd(0x1000, 4).close()


def test_irqfd_binding(kvm):
    with kvm.create_vm() as vm:
        with pytest.raises(InvalidArgumentError) as info:
            vm.irqfd(5)
        assert "IRQCHIP" in (info.value.hint or "")
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        irq = vm.irqfd(5)
        irq.trigger()                         # the kernel consumes the eventfd: raises GSI 5
        ev = irq.eventfd
        with pytest.raises(OSError):
            vm.irqfd(6, eventfd=ev)           # EBUSY: one irqfd per eventfd
        irq.close()
        ev2, rs = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
        again = vm.irqfd(6, eventfd=ev2)        # a borrowed eventfd stays open on close
        resample = vm.irqfd(4, resample_fd=rs)
        again.close()
        resample.close()
        assert not again.active and not resample.active
        os.fstat(ev2)
        os.close(ev2)
        os.close(rs)


# -- the KVM VFIO device -------------------------------------------------------------------------
def test_vfio_device_refuses_non_vfio_files_for_real(kvm):
    """On the host (no VFIO): the device exists, and FILE_ADD of a non-VFIO fd is EINVAL."""
    with kvm.create_vm() as vm:
        dev = vm.create_vfio_device()
        ev = os.eventfd(0, os.EFD_CLOEXEC)
        with pytest.raises(InvalidArgumentError) as info:
            dev.add_file(ev)
        assert info.value.op == "KVM_SET_DEVICE_ATTR" and "VFIO" in info.value.hint
        with pytest.raises(NotFoundError):
            dev.del_file(ev)
        os.close(ev)
        assert dev.files == {}


def _vfio_setup(be):
    from pyvfio.vfio.container import Container
    from pyvfio.vfio.group import Group

    container = Container(backend=be)
    group = Group(3, backend=be)
    container.attach(group)
    container.set_iommu()
    return container, group


def test_vfio_device_group_and_device_files_on_the_mock():
    be = MockBackend()
    container, group = _vfio_setup(be)
    device = group.open_device("0000:00:03.0")
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        kdev = vm.create_vfio_device()
        kdev.add_group(group)                          # KVM_DEV_VFIO_GROUP_ADD (== FILE_ADD)
        with pytest.raises(ExistsError):
            kdev.add_group(group)
        kdev.add_file(device)                          # a device fd (FILE_ADD, 6.6+)
        assert set(kdev.files) == {group.fileno(), device.fileno()}
        kdev.del_file(device)
        with pytest.raises(NotFoundError):
            kdev.del_file(device)
        # the KVM device holds a reference: the group file outlives its fd until DEL/close
        mock_group = machine(be).file(group.fileno())
        refs = mock_group._refs
        assert refs >= 2
        kdev.del_group(group)
        assert mock_group._refs == refs - 1
        kdev.add_group(group)
    # closing the VM dropped the device's reference
    assert machine(be).file(group.fileno())._refs >= 1
    group.close()
    container.close()


def test_memslot_over_a_mapped_vfio_bar_on_the_mock():
    """Device MMIO mapped into the guest, as QEMU maps BARs: the guest's store lands in the BAR
    mapping; large BAR slots map and unmap repeatedly without leaking."""
    be = MockBackend()
    container, group = _vfio_setup(be)
    device = group.open_device("0000:00:03.0")
    region = device.region_info(0)
    assert region.mappable
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        code = GuestMemory.anonymous(0x10000, backend=be)
        vm.add_memslot(code, 0)
        for _ in range(20):                                     # map / unmap cycles
            m = device.mmap(0, 0, region.size)
            bar = GuestMemory.from_address(m.addr, m.size, owner=m, kind="vfio-region", backend=be)
            slot = vm.add_memslot(bar, 0x40000, min(bar.size, 0x40000))
            slot.delete()
            bar.close()
            m.close()
        m = device.mmap(0, 0, region.size)
        bar = GuestMemory.from_address(m.addr, m.size, owner=m, kind="vfio-region", backend=be)
        slot = vm.add_memslot(bar, 0x40000, min(bar.size, 0x40000), log_dirty=True)
        _run(vm, code, guestcode.write_pages([0x40000 + 0x1000 + 0x80], 0x3C) + guestcode.HLT)
        assert m.read(0x1080, 1) == b"\x3c"                      # in the BAR mapping
        assert slot.get_dirty_log().pages().tolist() == [1]
        with pytest.raises(StateError):
            bar.close()                                          # still mapped by the slot
        slot.delete()
        bar.close()
        m.close()
    code.close()
    group.close()
    container.close()
