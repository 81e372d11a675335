"""The KVM system fd (/dev/kvm): API version, extensions, VM creation."""

from __future__ import annotations

import weakref

from .. import ioctls as I
from ..core.fd import FdObject, raise_first
from ..uapi.args import u32
from ..errors import UnsupportedError
from ..seam import Backend, get_backend
from ..uapi.names import KVM_CAPS
from .vm import Vm

class Kvm(FdObject):
    """The KVM system fd (/dev/kvm): API version, extensions, VM creation.

    Opens ``path`` and checks KVM_GET_API_VERSION == 12 (UnsupportedError otherwise).

    Threads: no lock is needed: ``api_version``, ``check_extension`` and ``create_vm`` pack
    nothing shared and may run concurrently from any thread (each VM gets its own fd);
    ``vcpu_mmap_size`` caches an immutable answer. ``close()`` must not race with them.
    """

    def __init__(self, path: str = "/dev/kvm", *, backend: Backend | str | None = None) -> None:
        be = get_backend(backend)
        fd = be.open(path)
        self._adopt_fd(be, fd, path)
        self._vms: weakref.WeakSet[Vm] = weakref.WeakSet()
        self._mmap_size: int | None = None
        try:
            v = self.api_version()
        except Exception:
            self.close()
            raise
        if v != I.KVM_API_VERSION:
            self.close()
            raise UnsupportedError(op="KVM_GET_API_VERSION", path=path,
                                   hint=f"KVM API version {v}, pyvfio speaks {I.KVM_API_VERSION}")

    def api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22."""
        return self._ioctl(I.KVM_GET_API_VERSION, 0)

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 when absent, else 1 or a cap-specific value.

        ``cap``: a number or a name in any case ("KVM_CAP_NR_MEMSLOTS", "nr_memslots").
        """
        return self._ioctl(I.KVM_CHECK_EXTENSION, KVM_CAPS.resolve(cap))

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run and friends)."""
        if self._mmap_size is None:
            self._mmap_size = self._ioctl(I.KVM_GET_VCPU_MMAP_SIZE, 0)
        return self._mmap_size

    def create_vm(self, vm_type: int = 0) -> "Vm":
        """KVM_CREATE_VM: a new VM. EINVAL for a type this kernel does not support."""
        fd = self._ioctl(I.KVM_CREATE_VM, u32(vm_type, "VM type"))
        self.backend.label(fd, "anon_inode:kvm-vm")
        vm = Vm(self, fd, vm_type)
        self._vms.add(vm)
        return vm

    def _close_children(self) -> None:
        """Close every VM, whatever fails on the way; then raise the first error."""
        errors: list[Exception] = []
        for vm in list(self._vms):
            try:
                vm.close()
            except Exception as e:
                errors.append(e)
        raise_first(errors, f"closing {self!r}")

    def __repr__(self) -> str:
        return f"<Kvm {self.path} fd={self._fd}>"
