"""KVM device files: the KVM VFIO device (KVM_DEV_TYPE_VFIO) and guest_memfd.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any


from ... import ioctls as I
from ..core import KernelError, MockFile, MockKernel, handles
from ..memory import read_user, user_mapped
from .core import _fd_kind, _is_vfio_file, _ptr

if TYPE_CHECKING:
    from .vm import VmFile


# ===============================================================================================
class KvmVfioDeviceFile(MockFile):
    """The KVM VFIO device (virt/kvm/vfio.c)."""

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.files: list[MockFile] = []

    def _attr(self, arg: Any) -> Any:
        return _ptr(arg, "struct kvm_device_attr")

    @handles("KVM_SET_DEVICE_ATTR")
    def set_attr(self, arg: Any) -> int:
        a = self._attr(arg)
        if int(a.group) != I.KVM_DEV_VFIO_FILE or int(a.attr) not in (I.KVM_DEV_VFIO_FILE_ADD,
                                                                       I.KVM_DEV_VFIO_FILE_DEL):
            raise KernelError(errno.ENXIO, "kvm-vfio: unknown attribute")
        addr = int(a.addr)
        if not user_mapped(addr, 4, "r"):
            raise KernelError(errno.EFAULT, "kvm-vfio: bad attribute address")
        fd = int.from_bytes(read_user(addr, 4), "little", signed=True)
        f = _fd_kind(self.kernel, fd)
        if f is None:
            raise KernelError(errno.EBADF, f"kvm-vfio: fd {fd} not open")
        if int(a.attr) == I.KVM_DEV_VFIO_FILE_ADD:
            if not _is_vfio_file(f):
                raise KernelError(errno.EINVAL, f"kvm-vfio: fd {fd} is not a VFIO file")
            assert isinstance(f, MockFile)
            if any(x is f for x in self.files):
                raise KernelError(errno.EEXIST, "kvm-vfio: file already added")
            self.files.append(f.get())
            kvm_set = getattr(f, "set_kvm", None)
            if callable(kvm_set):
                kvm_set(self.vm)
            return 0
        for x in self.files:
            if x is f:
                self.files.remove(x)
                kvm_set = getattr(f, "set_kvm", None)
                if callable(kvm_set):
                    kvm_set(None)
                x.put()
                return 0
        raise KernelError(errno.ENOENT, "kvm-vfio: file not added")

    @handles("KVM_GET_DEVICE_ATTR")
    def get_attr(self, arg: Any) -> int:
        raise KernelError(errno.EPERM, "kvm-vfio: no readable attributes")

    @handles("KVM_HAS_DEVICE_ATTR")
    def has_attr(self, arg: Any) -> int:
        a = self._attr(arg)
        if int(a.group) == I.KVM_DEV_VFIO_FILE and int(a.attr) in (I.KVM_DEV_VFIO_FILE_ADD,
                                                                    I.KVM_DEV_VFIO_FILE_DEL):
            return 0
        raise KernelError(errno.ENXIO)

    def release(self) -> None:
        for f in self.files:
            f.put()
        self.files.clear()
        self.vm.vfio_device = None
        self.vm.put()


class GuestMemfdFile(MockFile):
    """A guest_memfd: private memory of one VM (no host access in the mock)."""

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile, size: int) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.size = size

    def release(self) -> None:
        self.vm.put()


__all__ = ["KvmVfioDeviceFile", "GuestMemfdFile"]

