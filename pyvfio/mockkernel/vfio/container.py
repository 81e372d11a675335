"""/dev/vfio/vfio: the VFIO container (drivers/vfio/container.c).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ... import ioctls
from ..core import KernelError, MockFile, MockKernel, handles
from .core import IommuDriver, _int_arg, state

if TYPE_CHECKING:
    from .group import MockGroup


# ---------------------------------------------------------------------------------------------
# /dev/vfio/vfio
# ---------------------------------------------------------------------------------------------


class ContainerFile(MockFile):
    """A VFIO container (drivers/vfio/container.c)."""

    def __init__(self, kernel: MockKernel, path: str) -> None:
        super().__init__(kernel, path)
        self.groups: list[MockGroup] = []
        self.iommu: IommuDriver | None = None

    def ioctl(self, request: int, arg: Any) -> int:
        if request in self._requests:
            return super().ioctl(request, arg)
        if self.iommu is None:
            # vfio_fops_unl_ioctl: ret = -EINVAL, passthrough only when a driver is set
            raise KernelError(errno.EINVAL, f"{self.path}: request {request:#x} before VFIO_SET_IOMMU")
        return self.iommu.ioctl(request, arg)

    @handles("VFIO_GET_API_VERSION")
    def get_api_version(self, arg: Any) -> int:
        return ioctls.VFIO_API_VERSION

    @handles("VFIO_CHECK_EXTENSION")
    def check_extension(self, arg: Any) -> int:
        ext = _int_arg(arg)
        if self.iommu is not None:
            return self.iommu.check_extension(self.iommu, ext)
        for drv in state(self.kernel).iommu_drivers:
            ret = drv.check_extension(None, ext)
            if ret > 0:
                return ret
        return 0

    @handles("VFIO_SET_IOMMU")
    def set_iommu(self, arg: Any) -> int:
        kind = _int_arg(arg)
        if not self.groups or self.iommu is not None:
            raise KernelError(errno.EINVAL, "vfio: SET_IOMMU needs a group and no IOMMU set yet")
        err = KernelError(errno.ENODEV, f"vfio: no IOMMU driver for type {kind}")
        for drv in state(self.kernel).iommu_drivers:
            if drv.check_extension(None, kind) <= 0:
                continue
            try:
                iommu = drv(self.kernel, self, kind)
            except KernelError as e:
                err = e
                continue
            done: list[MockGroup] = []
            try:
                for g in self.groups:
                    iommu.attach_group(g)
                    done.append(g)
            except KernelError as e:
                for g in reversed(done):
                    iommu.detach_group(g)
                iommu.release()
                if e.msg:
                    self.kernel.log(e.msg)
                err = KernelError(e.errno)
                continue
            self.iommu = iommu
            return 0
        raise err

    # group attach/detach (vfio_container_attach_group / vfio_group_detach_container)
    def attach(self, group: "MockGroup") -> None:
        if not group.iommu_group.viable:
            raise KernelError(errno.EPERM, f"vfio: group {group.number} is not viable "
                              "(a device is bound to a host driver)")
        if self.iommu is not None:
            self.iommu.attach_group(group)
        self.groups.append(group)
        group.container = self
        self.get()

    def detach(self, group: "MockGroup") -> None:
        if self.iommu is not None:
            self.iommu.detach_group(group)
        self.groups.remove(group)
        group.container = None
        if self.iommu is not None and not self.groups:
            self.iommu.release()
            self.iommu = None
        self.put()


def open_container(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    return ContainerFile(kernel, "/dev/vfio/vfio")


