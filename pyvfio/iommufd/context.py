"""/dev/iommu: the iommufd context (:class:`IommuFd`) and :func:`open_device`.

:class:`IommuFd` owns the /dev/iommu fd and every object made through it. Its children close
first: bound devices (their cdev fds) → HWPTs → IOASes (their mappings) → the fd.

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> fd = IommuFd(backend=MockBackend())
    >>> ioas = fd.ioas_alloc()
    >>> fd.close()                           # closes the IOAS first
    >>> (fd.closed, ioas.closed)
    (True, True)
"""

from __future__ import annotations

import errno

from .. import ioctls as I
from ..core.fd import Bundle, FdObject
from ..errors import ArgumentError, PyvfioError, UnsupportedError
from ..seam import Backend, get_backend
from ..uapi import ffi
from ..uapi.args import fill, u32
from .device import IommufdDevice
from .ioas import _MAX_RANGES_RETRIES, HwCaps, HwInfo, HwInfoType, HwPagetable, Ioas, _cmd

IOMMU_PATH = "/dev/iommu"

__all__ = ["IommuFd", "OpenedIommufdDevice", "open_device", "IOMMU_PATH"]


class IommuFd(FdObject):
    """An open /dev/iommu (an iommufd context).

    Errors at open: NotFoundError when the kernel has no iommufd (CONFIG_IOMMUFD).

    Threads: ``option``, ``get_hw_info`` and ``destroy`` may run concurrently (fresh argument
    per call). ``ioas_alloc``, ``hwpt_alloc``, ``bind`` and ``close`` append to / unwind the
    child lists unlocked: one thread at a time (list appends alone are atomic under the GIL).
    """

    def __init__(self, *, backend: Backend | str | None = None, path: str = IOMMU_PATH) -> None:
        be = get_backend(backend)
        self._fd = -1
        try:
            fd = be.open(path)
        except PyvfioError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                e.hint = (f"{path} does not exist: the kernel lacks CONFIG_IOMMUFD (Debian's kernels "
                          "do; use python -m vm build-kernel for a guest kernel with it)")
            raise
        self._adopt_fd(be, fd, path)
        self.ioases: list[Ioas] = []
        self.hwpts: list[HwPagetable] = []
        self.devices: list[IommufdDevice] = []

    #: A raw request on the /dev/iommu fd (what tests of the kernel's rules use).
    ioctl = FdObject._ioctl

    # -- objects ---------------------------------------------------------------------------
    def ioas_alloc(self) -> Ioas:
        """IOMMU_IOAS_ALLOC: a new, empty IO address space (spans all IOVAs until a device
        attaches). Returns an :class:`Ioas` owned by this context."""
        c = _cmd("struct iommu_ioas_alloc")
        self._ioctl(I.IOMMU_IOAS_ALLOC, c)
        ioas = Ioas(self, int(c.out_ioas_id))
        self.ioases.append(ioas)
        return ioas

    def destroy(self, object_id: int) -> None:
        """IOMMU_DESTROY of any object id. ENOENT: no such object; EBUSY: still in use (an IOAS
        under a HWPT, a HWPT with a device attached, a bound device)."""
        c = fill(_cmd("struct iommu_destroy"), id=object_id)
        self._ioctl(I.IOMMU_DESTROY, c)

    def get_hw_info(self, dev_id: int) -> HwInfo:
        """IOMMU_GET_HW_INFO for a bound device: the IOMMU's type, capabilities (DIRTY_TRACKING)
        and driver data. Calls again when the kernel has more data than the first buffer."""
        dev_id = u32(dev_id, "dev_id")
        size = 64
        for _ in range(_MAX_RANGES_RETRIES):
            data = ffi.new("char[]", size)
            c = _cmd("struct iommu_hw_info")
            c.dev_id = dev_id
            c.data_len = size
            c.data_uptr = int(ffi.cast("uintptr_t", data))
            self._ioctl(I.IOMMU_GET_HW_INFO, c)
            if c.data_len <= size:
                try:
                    t: HwInfoType | int = HwInfoType(c.out_data_type)
                except ValueError:
                    t = int(c.out_data_type)
                return HwInfo(t, HwCaps(int(c.out_capabilities)), int(c.out_max_pasid_log2),
                              bytes(ffi.buffer(data, int(c.data_len))))
            size = int(c.data_len)
        raise PyvfioError(errno.EPROTO, "GET_HW_INFO data keeps growing", op=I.IOMMU_GET_HW_INFO.name,
                          path=self.path)

    def hwpt_alloc(self, dev_id: int, ioas: Ioas, *, dirty_tracking: bool = False,
                   nest_parent: bool = False, probe: bool = True) -> HwPagetable:
        """IOMMU_HWPT_ALLOC: a paging HWPT (an IOMMU domain) for device ``dev_id`` over ``ioas``.

        ``dirty_tracking`` asks for IOMMU_HWPT_ALLOC_DIRTY_TRACKING; with ``probe`` (default)
        GET_HW_INFO is asked first and UnsupportedError raised, before the allocation, when the
        IOMMU lacks DIRTY_TRACKING (QEMU's vIOMMUs do). EOPNOTSUPP from the kernel is
        UnsupportedError too. The HWPT holds the IOAS (IOMMU_DESTROY of it gives EBUSY) until
        :meth:`HwPagetable.destroy`.
        """
        flags = 0
        if dirty_tracking:
            if probe and not self.get_hw_info(dev_id).dirty_tracking:
                raise UnsupportedError(
                    errno.EOPNOTSUPP, "the IOMMU has no dirty tracking", op=I.IOMMU_HWPT_ALLOC.name,
                    path=self.path, hint="GET_HW_INFO reports no IOMMU_HW_CAP_DIRTY_TRACKING for this "
                    "device (QEMU's vIOMMUs do not emulate it); track dirty pages with the type1 "
                    "container or the device's DMA logging instead")
            flags |= I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
        if nest_parent:
            flags |= I.IOMMU_HWPT_ALLOC_NEST_PARENT
        c = _cmd("struct iommu_hwpt_alloc")
        c.flags, c.dev_id, c.pt_id = flags, dev_id, ioas.id
        c.data_type = I.IOMMU_HWPT_DATA_NONE
        self._ioctl(I.IOMMU_HWPT_ALLOC, c)
        hwpt = HwPagetable(self, int(c.out_hwpt_id), ioas, dirty_tracking=dirty_tracking)
        self.hwpts.append(hwpt)
        return hwpt

    # -- options ---------------------------------------------------------------------------
    def option(self, option_id: int, *, object_id: int = 0, value: int | None = None) -> int:
        """IOMMU_OPTION: GET (``value`` None) or SET; returns the value."""
        c = _cmd("struct iommu_option")
        c.option_id, c.object_id = option_id, object_id
        c.op = I.IOMMU_OPTION_OP_GET if value is None else I.IOMMU_OPTION_OP_SET
        if value is not None:
            c.val64 = value
        self._ioctl(I.IOMMU_OPTION, c)
        return int(c.val64)

    @property
    def rlimit_mode(self) -> int:
        """IOMMU_OPTION_RLIMIT_MODE: 0 charges pins to the user's locked_vm, 1 to the process's
        (VmLck, what VFIO type1 does). Setting needs CAP_SYS_RESOURCE (EPERM) and a context with
        no object yet (EBUSY)."""
        return self.option(I.IOMMU_OPTION_RLIMIT_MODE)

    @rlimit_mode.setter
    def rlimit_mode(self, value: int) -> None:
        if value not in (0, 1):
            raise ArgumentError(f"rlimit_mode is 0 (per user) or 1 (per process), not {value!r}")
        self.option(I.IOMMU_OPTION_RLIMIT_MODE, value=value)

    # -- devices ---------------------------------------------------------------------------
    def bind(self, bdf: str) -> IommufdDevice:
        """Open the device's cdev (/dev/vfio/devices/vfioN, found through sysfs) and
        VFIO_DEVICE_BIND_IOMMUFD it to this context. See :class:`IommufdDevice`."""
        dev = IommufdDevice(self, bdf)
        self.devices.append(dev)
        return dev

    def _device_closed(self, dev: IommufdDevice) -> None:
        if dev in self.devices:
            self.devices.remove(dev)

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Close bound devices, destroy HWPTs, unmap and destroy IOASes, close the fd
        (idempotent); the first error is raised after everything was attempted."""
        if self.closed:
            return
        errors: list[BaseException] = []
        for group in (self.devices, self.hwpts, self.ioases):
            while group:
                obj = group.pop()
                try:
                    obj.close()
                except Exception as e:  # keep unwinding
                    errors.append(e)
        self._close_fd()
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<IommuFd fd={getattr(self, '_fd', -1)} ioas={len(self.ioases)} devices={len(self.devices)}>"


class OpenedIommufdDevice(Bundle):
    """What :func:`open_device` returns: ``iommufd``, ``ioas`` (also as ``iommu``, what
    DmaMapper and the scenarios take), ``bound`` (the IommufdDevice) and ``device``."""

    def __init__(self, iommufd: IommuFd, ioas: Ioas, bound: IommufdDevice) -> None:
        self._root = self.iommufd = iommufd
        self.ioas = ioas
        self.iommu = ioas
        self.bound = bound
        self.device = bound.device

    def __repr__(self) -> str:
        return f"<OpenedIommufdDevice {self.bound.bdf} ioas={self.ioas.id} pt={self.bound.pt_id}>"


def open_device(bdf: str, *, backend: Backend | str | None = None) -> OpenedIommufdDevice:
    """Open PCI device ``bdf`` the iommufd way in one call: /dev/iommu, IOAS_ALLOC, the cdev
    bound (BIND_IOMMUFD) and attached to the IOAS. Every completed step is undone if a later
    one fails."""
    be = get_backend(backend)
    fd = IommuFd(backend=be)
    try:
        ioas = fd.ioas_alloc()
        bound = fd.bind(bdf)
        bound.attach(ioas)
    except BaseException:
        try:
            fd.close()
        except PyvfioError:
            pass
        raise
    return OpenedIommufdDevice(fd, ioas, bound)


