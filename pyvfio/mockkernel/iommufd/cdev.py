"""The VFIO device cdev /dev/vfio/devices/vfioN (drivers/vfio/device_cdev.c) and the DMA of a
simulated device attached through it.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from ...uapi import ffi
from ..core import KernelError, MockFile, MockKernel, handles
from ..vfio import IommuFault, state as vfio_state
from ..memory import read_user, write_user
from ..pci import open_device_file
from .file import IommufdFile
from .objects import IOMMU_READ, IOMMU_WRITE, Idev, PAGE, state


# ---------------------------------------------------------------------------------------------
# /dev/vfio/devices/vfioN
# ---------------------------------------------------------------------------------------------


class CdevDma:
    """What a simulated device behind a cdev DMAs through: the IOAS of its attached HWPT.

    Provides the same ``dma_read``/``dma_write`` contract as :class:`~pyvfio.mockkernel.vfio.MockGroup`
    (and ``iommu_group`` for hot-reset reports)."""

    def __init__(self, cdev: "VfioCdevFile") -> None:
        self.cdev = cdev
        self.iommu_group = cdev.entry.group

    def translate(self, iova: int, size: int, write: bool, device: str | None = None) -> int:
        idev = self.cdev.idev
        hwpt = idev.hwpt if idev is not None else None
        try:
            if hwpt is None:
                raise IommuFault(errno.EFAULT, "blocked domain")
            need = IOMMU_WRITE if write else IOMMU_READ
            pos, base = iova, None
            while pos < iova + size:
                hit = hwpt.ioas.areas_in(pos, pos)
                a = hit[0] if hit else None
                if a is None or not a.filled or not a.prot & need:
                    raise IommuFault(errno.EFAULT, f"IOMMU fault at {pos:#x}")
                va = a.vaddr(pos)
                if base is None:
                    base = va
                elif va != base + (pos - iova):
                    raise IommuFault(errno.EFAULT, "IOVA range not contiguous in memory")
                pos = a.last + 1
            assert base is not None
        except IommuFault:
            self._fault(iova, write, device)
            raise
        if write and hwpt.dirty_tracking:
            hwpt.dirty.update(range(iova // PAGE, (iova + size - 1) // PAGE + 1))
        return base

    def _fault(self, iova: int, write: bool, device: str | None) -> None:
        name = device or self.cdev.entry.name
        label = name.split(":", 1)[1] if name.count(":") == 2 else name
        kind, reason, text = (("Write", "0x05", "PTE Write access is not set") if write
                              else ("Read", "0x06", "PTE Read access is not set"))
        self.cdev.kernel.log(f"DMAR: [DMA {kind} NO_PASID] Request device [{label}] "
                             f"fault addr {iova:#x} [fault reason {reason}] {text}")

    def dma_read(self, iova: int, size: int, device: str | None = None) -> bytes:
        return read_user(self.translate(iova, size, False, device), size)

    def dma_write(self, iova: int, data: bytes, device: str | None = None) -> None:
        write_user(self.translate(iova, len(data), True, device), bytes(data))


class VfioCdevFile(MockFile):
    """An open /dev/vfio/devices/vfioN (vfio_device_fops through the cdev)."""

    def __init__(self, kernel: MockKernel, path: str, entry: Any) -> None:
        super().__init__(kernel, path)
        self.entry = entry
        self.ctx: IommufdFile | None = None
        self.idev: Idev | None = None
        self.inner: MockFile | None = None

    def ioctl(self, request: int, arg: Any) -> int:
        if request in self._requests:
            return super().ioctl(request, arg)
        if self.inner is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        return self.inner.ioctl(request, arg)

    def _bound(self) -> MockFile:
        if self.inner is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        return self.inner

    def pread(self, size: int, offset: int) -> bytes:
        return self._bound().pread(size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return self._bound().pwrite(data, offset)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        return self._bound().mmap(length, prot, flags, offset)

    @staticmethod
    def _argsz(arg: Any, ctype: str, last: str) -> Any:
        if isinstance(arg, int):
            raise KernelError(errno.EFAULT, "vfio: the argument must point to a struct")
        s = ffi.cast(ctype + " *", arg)
        fields = dict(ffi.typeof(ctype).fields)
        minsz = fields[last].offset + ffi.sizeof(fields[last].type)
        if s.argsz < minsz or s.flags:
            raise KernelError(errno.EINVAL, f"vfio: {ctype} argsz/flags invalid")
        return s

    @handles("VFIO_DEVICE_BIND_IOMMUFD")
    def bind_iommufd(self, arg: Any) -> int:
        b = self._argsz(arg, "struct vfio_device_bind_iommufd", "out_devid")
        if b.iommufd < 0:
            raise KernelError(errno.EINVAL, "vfio: BIND_IOMMUFD negative fd")
        st = state(self.kernel)
        g = self.entry.group
        if g.vfio is not None:
            raise KernelError(errno.EBUSY, f"vfio: group {g.number} is open through /dev/vfio/{g.number}")
        if self.ctx is not None:
            raise KernelError(errno.EINVAL, "vfio: device already bound")
        target = self.kernel.files.get(int(b.iommufd))
        if target is None:
            try:
                os.fstat(int(b.iommufd))
            except OSError:
                raise KernelError(errno.EBADF, f"vfio: fd {b.iommufd} is not open") from None
            raise KernelError(errno.EBADFD, f"vfio: fd {b.iommufd} is not an iommufd")
        if not isinstance(target, IommufdFile):
            raise KernelError(errno.EBADFD, f"vfio: fd {b.iommufd} is not an iommufd")
        if self.entry.name in st.bound:  # vfio_df_open: the cdev path opens a device once
            raise KernelError(errno.EINVAL, f"vfio: {self.entry.name} is already open through another cdev fd")
        # iommufd_device_bind
        if not g.interrupt_remapping:
            unsafe = vfio_state(self.kernel).read_param("iommufd", "allow_unsafe_interrupts", "N")
            if unsafe not in ("Y", "1"):
                raise KernelError(errno.EPERM, "iommufd: MSI interrupts cannot be isolated by the "
                                  'platform; use the "allow_unsafe_interrupts" module parameter')
            self.kernel.log(f"vfio-pci {self.entry.name}: MSI interrupts are not secure, they "
                            "cannot be isolated by the platform.")
        owner = st.dma_owner.get(g.number)
        if owner is not None and owner is not target:
            raise KernelError(errno.EBUSY, f"iommufd: group {g.number} DMA is owned by another iommufd")
        inner = open_device_file(self.kernel, CdevDma(self), self.entry.sim)
        idev = Idev(target, self.entry, self)
        target.add(idev)
        st.dma_owner[g.number] = target
        st.bound.add(self.entry.name)
        st.cdev_open[g.number] = st.cdev_open.get(g.number, 0) + 1
        self.ctx = target.get_ref()
        self.idev = idev
        self.inner = inner
        b.out_devid = idev.id
        return 0

    @handles("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
    def attach_pt(self, arg: Any) -> int:
        if self.ctx is None or self.idev is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        a = self._argsz(arg, "struct vfio_device_attach_iommufd_pt", "pt_id")
        a.pt_id = self.ctx.change_pt(self.idev, int(a.pt_id))
        return 0

    @handles("VFIO_DEVICE_DETACH_IOMMUFD_PT")
    def detach_pt(self, arg: Any) -> int:
        if self.ctx is None or self.idev is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        self._argsz(arg, "struct vfio_device_detach_iommufd_pt", "flags")
        self.ctx.detach(self.idev)
        return 0

    def release(self) -> None:
        if self.ctx is None or self.idev is None:
            return
        ctx, idev = self.ctx, self.idev
        try:
            if self.inner is not None:
                self.inner.put()
        finally:
            ctx.detach(idev)
            ctx.objects.pop(idev.id, None)
            st = state(self.kernel)
            st.bound.discard(self.entry.name)
            n = idev.group.number
            st.cdev_open[n] -= 1
            if not st.cdev_open[n]:
                del st.cdev_open[n]
                if st.dma_owner.get(n) is ctx:
                    del st.dma_owner[n]
            self.ctx = self.idev = self.inner = None
            ctx.put()


