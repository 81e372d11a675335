"""/dev/vfio/N: an open VFIO group (drivers/vfio/group.c) and the DMA its devices do through it.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

from ... import ioctls
from ...uapi import ffi
from ..core import KernelError, MockFile, MockKernel, handles
from ..memory import read_user, write_user
from ..pci.vfio_pci import open_device_file
from .container import ContainerFile
from .core import IommuDriver, IommuFault, MockIommuGroup, state


# ---------------------------------------------------------------------------------------------
# /dev/vfio/N
# ---------------------------------------------------------------------------------------------


class MockGroup(MockFile):
    """An open VFIO group file (drivers/vfio/group.c)."""

    def __init__(self, kernel: MockKernel, path: str, iommu_group: MockIommuGroup) -> None:
        super().__init__(kernel, path)
        self.iommu_group = iommu_group
        self.number = iommu_group.number
        self.container: ContainerFile | None = None
        #: Open device files of this group (each holds a reference on this file).
        self.device_files: list[MockFile] = []

    # -- ioctls ------------------------------------------------------------------------------
    @handles("VFIO_GROUP_GET_STATUS")
    def get_status(self, arg: Any) -> int:
        st = ffi.cast("struct vfio_group_status *", arg)
        if st.argsz < ffi.sizeof("struct vfio_group_status"):
            raise KernelError(errno.EINVAL, "vfio: GROUP_GET_STATUS argsz too small")
        flags = 0
        if self.container is not None:
            flags |= ioctls.VFIO_GROUP_FLAGS_CONTAINER_SET | ioctls.VFIO_GROUP_FLAGS_VIABLE
        elif self.iommu_group.viable:
            flags |= ioctls.VFIO_GROUP_FLAGS_VIABLE
        st.flags = flags
        return 0

    @handles("VFIO_GROUP_SET_CONTAINER")
    def set_container(self, arg: Any) -> int:
        if isinstance(arg, int):
            raise KernelError(errno.EFAULT, "vfio: SET_CONTAINER takes a pointer to the fd")
        fd = int(ffi.cast("int32_t *", arg)[0])
        target = self.kernel.files.get(fd)
        if target is None:
            try:
                os.fstat(fd)
            except OSError:
                raise KernelError(errno.EBADF, f"vfio: SET_CONTAINER fd {fd} is not open") from None
            raise KernelError(errno.EBADFD, f"vfio: SET_CONTAINER fd {fd} is not a container")
        if self.container is not None:
            raise KernelError(errno.EINVAL, f"vfio: group {self.number} already has a container")
        if not isinstance(target, ContainerFile):
            attach = getattr(target, "vfio_compat_attach_group", None)  # iommufd compat hook
            if attach is None:
                raise KernelError(errno.EBADFD, f"vfio: fd {fd} is not a container")
            return int(attach(self))
        target.attach(self)
        return 0

    @handles("VFIO_GROUP_UNSET_CONTAINER")
    def unset_container(self, arg: Any) -> int:
        if self.container is None:
            raise KernelError(errno.EINVAL, f"vfio: group {self.number} has no container")
        if self.device_files:
            raise KernelError(errno.EBUSY, f"vfio: group {self.number} has open device fds")
        self.container.detach(self)
        return 0

    @handles("VFIO_GROUP_GET_DEVICE_FD")
    def get_device_fd(self, arg: Any) -> int:
        if isinstance(arg, int):
            raise KernelError(errno.EFAULT, "vfio: GET_DEVICE_FD takes a pointer to a name")
        name = ffi.string(ffi.cast("char *", arg), 4096).decode(errors="replace")
        entry = next((d for d in self.iommu_group.devices
                      if d.name == name and d.driver == "vfio-pci"), None)
        if entry is None:
            raise KernelError(errno.ENODEV, f"vfio: no device {name!r} in group {self.number}")
        if self.container is None or self.container.iommu is None:
            raise KernelError(errno.EINVAL, f"vfio: group {self.number} has no container with an IOMMU")
        if entry.sim is None or not hasattr(entry.sim, "name"):
            raise KernelError(errno.ENODEV, f"vfio: {name} has no simulated device behind it")
        dev_file = open_device_file(self.kernel, self, entry.sim)
        self._track_device(dev_file)
        return self.kernel.install(dev_file)

    def _track_device(self, dev_file: MockFile) -> None:
        """The device file holds the group file (and a container user) until it is released."""
        self.get()
        self.device_files.append(dev_file)
        inner: Callable[[], None] = dev_file.release

        def release() -> None:
            try:
                inner()
            finally:
                if dev_file in self.device_files:
                    self.device_files.remove(dev_file)
                self.put()

        dev_file.release = release  # type: ignore[method-assign]

    def release(self) -> None:
        if self.container is not None:
            self.container.detach(self)
        self.iommu_group.vfio = None

    # -- DMA through the container's IOMMU (used by simulated devices) -----------------------
    @property
    def iommu(self) -> IommuDriver | None:
        return self.container.iommu if self.container is not None else None

    def device_label(self, name: str | None = None) -> str:
        name = name or (self.iommu_group.devices[0].name if self.iommu_group.devices else "?")
        return name.split(":", 1)[1] if name.count(":") == 2 else name

    def translate(self, iova: int, size: int, write: bool, device: str | None = None) -> int:
        """IOVA -> user address for a device access of ``size`` bytes; IommuFault if refused."""
        iommu = self.iommu
        try:
            if iommu is None:
                raise IommuFault(errno.EFAULT, "no IOMMU domain")
            return iommu.translate(iova, size, write)
        except IommuFault:
            self._fault(iova, write, device)
            raise

    def _fault(self, iova: int, write: bool, device: str | None) -> None:
        kind, reason, text = (("Write", "0x05", "PTE Write access is not set") if write
                              else ("Read", "0x06", "PTE Read access is not set"))
        self.kernel.log(f"DMAR: [DMA {kind} NO_PASID] Request device [{self.device_label(device)}] "
                        f"fault addr {iova:#x} [fault reason {reason}] {text}")

    def dma_read(self, iova: int, size: int, device: str | None = None) -> bytes:
        """What a device reads at ``iova`` (IommuFault, logged, if not readable)."""
        return read_user(self.translate(iova, size, False, device), size)

    def dma_write(self, iova: int, data: bytes, device: str | None = None) -> None:
        """A device write at ``iova``; on a fault nothing lands (IommuFault, logged)."""
        write_user(self.translate(iova, len(data), True, device), bytes(data))


def open_group(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    n = int(m.group(1))
    g = state(kernel).groups.get(n)
    if g is None or not g.has_vfio_device():
        raise KernelError(errno.ENOENT, f"/dev/vfio/{n}: no such VFIO group")
    if g.vfio is not None:
        raise KernelError(errno.EBUSY, f"/dev/vfio/{n}: group already open")
    if any(blocked(n) for blocked in state(kernel).open_blockers):  # cdev_device_open_cnt
        raise KernelError(errno.EBUSY, f"/dev/vfio/{n}: a device of the group is bound through its cdev")
    g.vfio = MockGroup(kernel, f"/dev/vfio/{n}", g)
    return g.vfio


