"""KVM devices (KVM_CREATE_DEVICE) and the KVM VFIO pseudo device.

The VFIO device tells KVM which VFIO groups (or, since 6.6, device cdevs) the VM uses, so KVM
can e.g. honour non-coherent DMA and let VFIO find the kvm (vfio-pci's gvt/ap/s390 users,
sPAPR TCE acceleration). One VFIO device per VM (a second KVM_CREATE_DEVICE answers EBUSY).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from .. import ioctls as I
from ..errors import register_hint
from ..uapi import ffi
from ..core.fd import FdObject

if TYPE_CHECKING:
    from .vm import Vm

register_hint("KVM_SET_DEVICE_ATTR", errno.EINVAL,
              "for the KVM VFIO device: the fd is not a VFIO group/device file (or vfio is not loaded)")
register_hint("KVM_CREATE_DEVICE", errno.EBUSY, "a VM has at most one KVM VFIO device")


def _fd_of(f: Any) -> int:
    return f if isinstance(f, int) else f.fileno()


class KvmDevice(FdObject):
    """A device fd from KVM_CREATE_DEVICE: KVM_{SET,GET,HAS}_DEVICE_ATTR.

    Threads: each attribute call packs a fresh ``struct kvm_device_attr``, so ``set_attr``/
    ``get_attr``/``has_attr`` may run concurrently (the kernel serialises them per device).
    ``close()`` must not race with them.
    """

    def __init__(self, vm: "Vm", fd: int, dev_type: int) -> None:
        self._adopt_fd(vm.backend, fd, f"anon_inode:kvm-device-{dev_type}")
        self.vm = vm
        self.type = dev_type

    def _attr(self, group: int, attr: int, addr: int, flags: int = 0) -> Any:
        a = ffi.new("struct kvm_device_attr *")
        a.flags = flags
        a.group = group
        a.attr = attr
        a.addr = addr
        return a

    def set_attr(self, group: int, attr: int, value_addr: int = 0) -> None:
        """KVM_SET_DEVICE_ATTR. ENXIO: unknown group/attr; other errnos are the device's."""
        self._ioctl(I.KVM_SET_DEVICE_ATTR, self._attr(group, attr, value_addr))

    def get_attr(self, group: int, attr: int, value_addr: int) -> None:
        """KVM_GET_DEVICE_ATTR into ``value_addr``. ENXIO: unknown group/attr."""
        self._ioctl(I.KVM_GET_DEVICE_ATTR, self._attr(group, attr, value_addr))

    def has_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR: True if the attribute exists (ENXIO -> False)."""
        try:
            self._ioctl(I.KVM_HAS_DEVICE_ATTR, self._attr(group, attr, 0))
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False
            raise
        return True

    def _close_children(self) -> None:
        try:
            self.vm._children.remove(self)
        except ValueError:
            pass


class KvmVfioDevice(KvmDevice):
    """The KVM VFIO device (KVM_DEV_TYPE_VFIO). Made by :meth:`Vm.create_vfio_device`.

    Threads: as :class:`KvmDevice`; ``add_file``/``del_file`` of *different* files may run
    concurrently (fresh argument per call; ``files`` is updated by single dict operations), not
    two calls for the same file.
    """

    def __init__(self, vm: "Vm", fd: int, dev_type: int = I.KVM_DEV_TYPE_VFIO) -> None:
        super().__init__(vm, fd, dev_type)
        self.files: dict[int, Any] = {}  # fd -> the object added (kept alive)

    def _file_attr(self, attr: int, f: Any) -> None:
        val = ffi.new("__s32 *", _fd_of(f))
        self.set_attr(I.KVM_DEV_VFIO_FILE, attr, int(ffi.cast("uintptr_t", val)))

    def add_file(self, f: Any) -> None:
        """KVM_DEV_VFIO_FILE_ADD (same number as KVM_DEV_VFIO_GROUP_ADD) of a VFIO group or
        device fd (or an object with fileno()).

        EBADF: not an open fd; EINVAL: not a VFIO file; EEXIST: already added.
        """
        self._file_attr(I.KVM_DEV_VFIO_FILE_ADD, f)
        self.files[_fd_of(f)] = f

    def del_file(self, f: Any) -> None:
        """KVM_DEV_VFIO_FILE_DEL. ENOENT: the file was not added; EBADF/EINVAL as add_file."""
        self._file_attr(I.KVM_DEV_VFIO_FILE_DEL, f)
        self.files.pop(_fd_of(f), None)

    add_group = add_file
    del_group = del_file
