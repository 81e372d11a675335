"""VFIO devices through their cdev (/dev/vfio/devices/vfioN) bound to an iommufd.

The cdev path replaces the container and the group: open the device's character device (found
through sysfs ``/sys/bus/pci/devices/BDF/vfio-dev/vfioN``), VFIO_DEVICE_BIND_IOMMUFD it to an
:class:`~pyvfio.iommufd.ioas.IommuFd`, VFIO_DEVICE_ATTACH_IOMMUFD_PT it to an IOAS (the kernel
makes or reuses an automatic HWPT) or to a HWPT. The device fd is then the very same
:class:`~pyvfio.vfio.device.Device` the group path gives (regions, interrupts, reset), built
with no group.

Close order: the Device (its mappings, its fd: the kernel detaches and unbinds) before the
iommufd's HWPTs and IOASes; :meth:`IommuFd.close` does it in that order.

Example (mock)::

    >>> from pyvfio.iommufd import open_device
    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.services.dma import DmaBuffer
    >>> from pyvfio.vfio.edu import EduDevice
    >>> with open_device("0000:00:03.0", backend=MockBackend()) as d, DmaBuffer(4096) as buf:
    ...     edu = EduDevice(d.device); edu.enable_bus_master()
    ...     m = d.ioas.map(buf, 0x100000)
    ...     buf.write(0, b"hello")
    ...     _ = edu.to_device(m.iova, 5); _ = edu.from_device(m.iova + 8, 5)
    ...     buf.read(8, 5)
    b'hello'
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from ..core.fd import Closeable
from .. import ioctls as I
from ..errors import ArgumentError, NotFoundError, register_hint
from ..seam import Backend, get_backend
from ..uapi import ffi
from ..uapi.args import new, u32
from ..util.bdf import normalize_bdf
from ..util.sysfs import vfio_cdev_names
from ..vfio.device import Device
from .ioas import HwInfo, HwPagetable, Ioas

if TYPE_CHECKING:
    from .context import IommuFd

CDEV_DIR = "/dev/vfio/devices"

__all__ = ["IommufdDevice", "cdev_path", "CDEV_DIR"]


def cdev_path(bdf: str, *, backend: Backend | str | None = None) -> str:
    """/dev/vfio/devices/vfioN of PCI device ``bdf``, from sysfs ``vfio-dev/``.

    NotFoundError (with a hint) when the device is not bound to vfio-pci or the kernel has no
    VFIO_DEVICE_CDEV.
    """
    be = get_backend(backend)
    bdf = normalize_bdf(bdf)
    ddir = os.path.join(be.sysfs_root, "bus", "pci", "devices", bdf)
    vdir = os.path.join(ddir, "vfio-dev")
    names = vfio_cdev_names(be.sysfs_root, bdf)
    if not names:
        if not os.path.isdir(ddir):
            hint = f"no PCI device {bdf}"
        else:
            drv = os.path.join(ddir, "driver")
            bound = os.path.basename(os.readlink(drv)) if os.path.islink(drv) else None
            hint = (f"{bdf} is bound to {bound or 'no driver'}, not vfio-pci" if bound != "vfio-pci"
                    else "the kernel has no VFIO_DEVICE_CDEV (no vfio-dev/ in sysfs)")
        raise NotFoundError(errno.ENOENT, f"no VFIO cdev for {bdf}", op="cdev lookup", path=vdir,
                            hint=hint)
    return os.path.join(CDEV_DIR, names[0])


class IommufdDevice(Closeable):
    """A device bound to an iommufd through its cdev: ``device`` (the Device), ``dev_id`` (its
    iommufd object id), ``pt_id`` (the HWPT it is attached to, or None).

    Built by :meth:`IommuFd.bind`. Errors of the bind: BusyError when the device's VFIO group is
    open (the legacy path owns it), PermissionDeniedError without interrupt remapping (hint:
    iommufd's allow_unsafe_interrupts).

    Threads: ``attach``/``detach``/``close`` change :attr:`pt_id`/:attr:`attached_to` unlocked:
    one thread; the :attr:`device`'s own calls follow :class:`~pyvfio.vfio.device.Device`.
    """

    def __init__(self, iommufd: IommuFd, bdf: str) -> None:
        self.iommufd = iommufd
        self.backend = iommufd.backend
        self.bdf = normalize_bdf(bdf)
        self.path = cdev_path(self.bdf, backend=self.backend)
        self.pt_id: int | None = None
        self.attached_to: Ioas | HwPagetable | None = None
        fd = self.backend.open(self.path)
        self.device = Device(fd, group=self, name=self.bdf, backend=self.backend)
        try:
            b = ffi.new("struct vfio_device_bind_iommufd *")
            b.argsz = ffi.sizeof(b[0])
            b.iommufd = iommufd.fileno()
            self.backend.ioctl(fd, I.VFIO_DEVICE_BIND_IOMMUFD, b)
            self.dev_id = int(b.out_devid)
        except BaseException:
            self.device.close()
            raise

    @property
    def closed(self) -> bool:
        return self.device.closed

    def _ioctl(self, request: I.Request, arg: Any) -> int:
        """``request`` on the device's cdev fd (owned by :attr:`device`)."""
        return self.backend.ioctl(self.device.fileno(), request, arg)

    def attach(self, target: "Ioas | HwPagetable | int") -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT: to an IOAS (the kernel reuses or makes an automatic
        HWPT), a HWPT, or a raw object id. Attaching again replaces. Returns the HWPT id.
        The IOAS's cached IOVA ranges are refreshed (the attach narrows them)."""
        pt_of = getattr(target, "id", None)
        if pt_of is None and (target is None or isinstance(target, (bool, float, str))
                              or not hasattr(target, "__index__")):
            raise ArgumentError(f"attach() takes an Ioas, a HwPagetable or an object id, not {target!r}")
        pt = u32(target if pt_of is None else pt_of, "pt_id")
        a = new("struct vfio_device_attach_iommufd_pt",
                argsz=ffi.sizeof("struct vfio_device_attach_iommufd_pt"), pt_id=pt)
        self._ioctl(I.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        self._invalidate()  # the previous attachment's IOAS widens again
        self.pt_id = int(a.pt_id)
        self.attached_to = None if isinstance(target, int) else target
        self._invalidate()
        return self.pt_id

    def detach(self) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT (a no-op when not attached): DMA is blocked again; an
        automatic HWPT goes away with its last device."""
        d = ffi.new("struct vfio_device_detach_iommufd_pt *")
        d.argsz = ffi.sizeof(d[0])
        self._ioctl(I.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
        self._invalidate()
        self.pt_id = None
        self.attached_to = None

    def _invalidate(self) -> None:
        t = self.attached_to
        ioas = t if isinstance(t, Ioas) else (t.ioas if isinstance(t, HwPagetable) else None)
        if ioas is not None:
            ioas.invalidate()
        for i in self.iommufd.ioases:
            i.invalidate()

    def hw_info(self) -> HwInfo:
        """IOMMU_GET_HW_INFO for this device."""
        return self.iommufd.get_hw_info(self.dev_id)

    def _device_closed(self, device: Device) -> None:
        """Device.close() calls this: the kernel detached and unbound with the fd."""
        self._invalidate()
        self.pt_id = None
        self.attached_to = None
        self.iommufd._device_closed(self)

    def close(self) -> None:
        """Close the device fd (unmapping its regions first); the kernel detaches and unbinds.
        Idempotent."""
        self.device.close()


    def __repr__(self) -> str:
        return f"<IommufdDevice {self.bdf} {self.path} dev_id={getattr(self, 'dev_id', '?')} pt={self.pt_id}>"


register_hint(I.VFIO_DEVICE_BIND_IOMMUFD.name, errno.EBUSY,
              "the device's VFIO group is open through /dev/vfio/N (the legacy container path): "
              "close it first; a device is used either through its group or through its cdev")
register_hint(I.VFIO_DEVICE_BIND_IOMMUFD.name, errno.EPERM,
              "the platform cannot isolate MSIs (no interrupt remapping): set "
              "/sys/module/iommufd/parameters/allow_unsafe_interrupts to Y if you accept that")
register_hint(I.VFIO_DEVICE_BIND_IOMMUFD.name, errno.EINVAL,
              "the device fd is already bound, or it came from a VFIO group (only cdev fds bind)")
register_hint(I.VFIO_DEVICE_ATTACH_IOMMUFD_PT.name, errno.EADDRINUSE,
              "a mapping (or an allowed IOVA range) sits where the device needs a reserved range "
              "(the MSI window) or outside the IOMMU aperture: unmap it before attaching")
register_hint(I.VFIO_DEVICE_ATTACH_IOMMUFD_PT.name, errno.ENOMEM,
              "pinning the IOAS's mappings would exceed RLIMIT_MEMLOCK")
