"""Unwinding on the KVM objects when a syscall fails (issue 21, items 5 and 7), on the mock with
faults injected through :class:`pyvfio.testing.FaultyBackend`."""

from __future__ import annotations

import errno
import mmap

import pytest

from pyvfio.errors import PyvfioError
from pyvfio.kvm import GuestMemory, Kvm
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import FaultyBackend

PAGE = mmap.PAGESIZE


def _vcpu_files(be: MockBackend) -> list[int]:
    return [fd for fd in be.kernel.files if (be.path_of(fd) or "").startswith("anon_inode:kvm-vcpu")]


def test_vm_close_goes_on_past_a_vcpu_munmap_error():
    """A vCPU's kvm_run munmap fails while the VM closes: the other vCPUs still close, the
    memslots are still let go (GuestMemory.users drops, so the memory can be closed), the VM
    fd is closed, and the error is raised at the end."""
    inner = MockBackend()
    be = FaultyBackend(inner)
    kvm = Kvm(backend=be)
    vm = kvm.create_vm()
    mem = GuestMemory.anonymous(4 * PAGE, backend=be)
    vm.add_memslot(mem, 0, 4 * PAGE)
    vcpus = [vm.create_vcpu() for _ in range(3)]
    be.fail("munmap", err=errno.EINVAL)
    with pytest.raises(PyvfioError) as e:
        vm.close()
    assert e.value.errno == errno.EINVAL
    assert vm.closed and all(v.closed for v in vcpus) and not vm.vcpus
    assert _vcpu_files(inner) == []
    assert mem.users == 0
    mem.close()  # no StateError
    kvm.close()


def test_vm_close_goes_on_past_a_child_close_error():
    """An eventfd binding's close fails: the vCPUs and memslots are still unwound."""
    be = FaultyBackend(MockBackend())
    with Kvm(backend=be) as kvm:
        vm = kvm.create_vm()
        vm.create_irqchip()
        mem = GuestMemory.anonymous(PAGE, backend=be)
        vm.add_memslot(mem, 0, PAGE)
        vm.irqfd(5)
        v = vm.create_vcpu()
        be.fail("ioctl", "KVM_IRQFD", errno.EIO)  # the deassign on close
        with pytest.raises(PyvfioError):
            vm.close()
        assert v.closed and mem.users == 0 and vm.closed
        mem.close()


def test_kvm_close_closes_every_vm_despite_an_error():
    inner = MockBackend()
    be = FaultyBackend(inner)
    kvm = Kvm(backend=be)
    vms = [kvm.create_vm() for _ in range(3)]
    for vm in vms:
        vm.create_vcpu()
    be.fail("munmap", err=errno.EINVAL)  # the first VM's vCPU
    with pytest.raises(PyvfioError):
        kvm.close()
    assert kvm.closed and all(vm.closed for vm in vms)
    assert not [fd for fd in inner.kernel.files if "kvm" in (inner.path_of(fd) or "")]


def test_vcpu_fd_not_leaked_when_mmap_size_fails():
    inner = MockBackend()
    be = FaultyBackend(inner)
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        be.fail("ioctl", "KVM_GET_VCPU_MMAP_SIZE", errno.EIO)
        with pytest.raises(PyvfioError) as e:
            vm.create_vcpu()
        # the traceback keeps the half-made Vcpu alive: its finalizer (the last resort) has
        # not run, so only an explicit close in __init__ makes the fd go
        assert e.traceback is not None
        assert _vcpu_files(inner) == []
        assert vm.vcpus == {}
