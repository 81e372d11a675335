"""VFIO groups (/dev/vfio/N): status, container attach/detach, device fds, sysfs lookup.

A group is the unit of ownership: every device of an IOMMU group must be bound to vfio-pci (or
unbound) before the group is *viable* and can join a container. A group file can be open only
once system-wide (EBUSY otherwise: the hint names the holder when /proc shows it).

Example (mock)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.vfio import Group
    >>> be = MockBackend()
    >>> Group.number_of("0000:00:03.0", backend=be)
    3
    >>> with Group.from_bdf("0000:00:03.0", backend=be) as g:
    ...     g.status().viable
    True
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import ioctls
from ..errors import ArgumentError, NotFoundError, PyvfioError, StateError, register_hint
from ..core.fd import FdObject
from ..seam import Backend, get_backend
from ..uapi import ffi
from ..util.bdf import normalize_bdf
from ..util.sysfs import iommu_group_devices, vfio_cdev_names
from .device import Device

if TYPE_CHECKING:
    from .container import Container

GROUP_DIR = "/dev/vfio"
#: Where the VFIO device cdevs live (the iommufd path).
CDEV_DIR = "/dev/vfio/devices"


class GroupFlags(enum.IntFlag):
    """struct vfio_group_status flags."""

    VIABLE = ioctls.VFIO_GROUP_FLAGS_VIABLE
    CONTAINER_SET = ioctls.VFIO_GROUP_FLAGS_CONTAINER_SET


@dataclass(frozen=True)
class GroupStatus:
    """VFIO_GROUP_GET_STATUS answer."""

    flags: GroupFlags

    @property
    def viable(self) -> bool:
        """Every device of the IOMMU group is bound to vfio-pci or unbound."""
        return bool(self.flags & GroupFlags.VIABLE)

    @property
    def container_set(self) -> bool:
        return bool(self.flags & GroupFlags.CONTAINER_SET)


def holders_of(path: str, backend: Backend | None = None) -> list[tuple[int, int, str]]:
    """Processes holding ``path`` open: (pid, fd, command) from /proc/*/fd, plus this process's
    own fds known to ``backend`` (the mock's files are not visible in /proc)."""
    found: list[tuple[int, int, str]] = []
    me = os.getpid()
    if backend is not None:
        known = getattr(backend, "_paths", {})  # RealBackend/MockBackend fd labels
        for fd in sorted(known):
            if backend.path_of(fd) == path:
                found.append((me, fd, "this process"))
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fddir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue
        for name in fds:
            try:
                if os.readlink(f"{fddir}/{name}") == path:
                    try:
                        with open(f"/proc/{pid}/comm") as f:
                            comm = f.read().strip()
                    except OSError:
                        comm = "?"
                    if (pid, int(name)) not in {(p, d) for p, d, _ in found}:
                        found.append((pid, int(name), comm))
            except OSError:
                continue
    return found


class Group(FdObject):
    """An open VFIO group.

    Opens ``/dev/vfio/<number>``. Errors: NotFoundError (no such group: no device of the IOMMU
    group is bound to vfio-pci), BusyError (already open: the hint names the holder),
    PermissionDeniedError.

    Threads: ``status``/``viable``/``get_device_fd`` may run concurrently (one ioctl each, no
    shared state). ``set_container``, ``unset_container``, ``open_device`` and ``close`` update
    :attr:`devices` and the container's group list without a lock: one thread at a time.
    """

    def __init__(self, number: int, *, backend: Backend | str | None = None) -> None:
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ArgumentError(f"group number must be a non-negative int, not {number!r}")
        be = get_backend(backend)
        self.number = number
        self.container: Container | None = None
        self.devices: list[Device] = []
        self._fd = -1
        path = f"{GROUP_DIR}/{number}"
        try:
            fd = be.open(path)
        except PyvfioError as e:
            if e.errno == errno.EBUSY and e.hint is None:
                e.hint = _busy_hint(path, be, number)
            elif e.errno == errno.ENOENT and e.hint is None:
                e.hint = (f"no VFIO group {number}: bind a device of IOMMU group {number} to "
                          "vfio-pci (driver_override + drivers_probe) and check that vfio-pci is loaded")
            raise
        self._adopt_fd(be, fd, path)

    # -- factories ------------------------------------------------------------------------------
    @staticmethod
    def number_of(bdf: str, *, backend: Backend | str | None = None) -> int:
        """The IOMMU group number of PCI device ``bdf`` (sysfs iommu_group link)."""
        be = get_backend(backend)
        bdf = normalize_bdf(bdf)
        link = os.path.join(be.sysfs_root, "bus", "pci", "devices", bdf, "iommu_group")
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            if not os.path.exists(os.path.join(be.sysfs_root, "bus", "pci", "devices", bdf)):
                raise NotFoundError(errno.ENODEV, f"no PCI device {bdf}", op="sysfs lookup",
                                    path=link) from None
            raise NotFoundError(errno.ENODEV, f"{bdf} has no IOMMU group", op="sysfs lookup", path=link,
                                hint="the device is not behind an enabled IOMMU: boot with "
                                     "intel_iommu=on / amd_iommu=on") from None
        return int(os.path.basename(target))

    @classmethod
    def from_bdf(cls, bdf: str, *, backend: Backend | str | None = None) -> "Group":
        """Open the group of PCI device ``bdf`` (found through sysfs)."""
        be = get_backend(backend)
        return cls(cls.number_of(bdf, backend=be), backend=be)

    def device_names(self) -> list[str]:
        """BDFs of every device in the IOMMU group (sysfs kernel/iommu_groups/N/devices)."""
        return iommu_group_devices(self.backend.sysfs_root, self.number)

    # -- ioctls ---------------------------------------------------------------------------------
    def status(self) -> GroupStatus:
        """VFIO_GROUP_GET_STATUS: viability and whether a container is set."""
        st = ffi.new("struct vfio_group_status *")
        st.argsz = ffi.sizeof("struct vfio_group_status")
        self._ioctl(ioctls.VFIO_GROUP_GET_STATUS, st)
        return GroupStatus(GroupFlags(st.flags))

    @property
    def viable(self) -> bool:
        return self.status().viable

    def set_container(self, container: "Container") -> None:
        """VFIO_GROUP_SET_CONTAINER. Errors: EPERM (group not viable: a device is bound to a
        host driver), EINVAL (already in a container), EBADFD (not a container fd)."""
        if self.container is not None:
            raise StateError(f"group {self.number} is already attached to {self.container!r}")
        fdp = ffi.new("__s32 *", container.fileno())
        self._ioctl(ioctls.VFIO_GROUP_SET_CONTAINER, fdp)
        self.container = container
        container.groups.append(self)

    def unset_container(self) -> None:
        """VFIO_GROUP_UNSET_CONTAINER, after closing this group's device fds (EBUSY otherwise).

        When this is the container's last group the kernel drops the IOMMU and every mapping:
        the container's IOMMU object is closed (its mappings unmapped) first.
        """
        c = self.container
        if c is None:
            return
        self._close_devices()
        if c.groups == [self]:
            c._release_iommu()
        self._ioctl(ioctls.VFIO_GROUP_UNSET_CONTAINER, 0)
        self.container = None
        if self in c.groups:
            c.groups.remove(self)

    def get_device_fd(self, bdf: str) -> int:
        """VFIO_GROUP_GET_DEVICE_FD: a new device fd (owned by the caller).

        Errors: ENODEV (not in this group or not bound to vfio-pci), EINVAL (the group's
        container has no IOMMU yet: call Container.set_iommu first).
        """
        name = ffi.new("char[]", normalize_bdf(bdf).encode())
        fd = self._ioctl(ioctls.VFIO_GROUP_GET_DEVICE_FD, name)
        self.backend.label(fd, f"vfio-device:{bdf}")
        return fd

    def open_device(self, bdf: str) -> Device:
        """The :class:`~pyvfio.vfio.device.Device` for ``bdf``, owned by this group: closing the
        group closes it first."""
        bdf = normalize_bdf(bdf)
        fd = self.get_device_fd(bdf)
        try:
            dev = Device(fd, group=self, name=bdf, backend=self.backend)
        except BaseException:
            self.backend.close(fd)
            raise
        self.devices.append(dev)
        return dev

    # -- lifetime -----------------------------------------------------------------------------
    def _device_closed(self, device: Any) -> None:
        """Called by Device.close(): forget a device closed on its own."""
        if device in self.devices:
            self.devices.remove(device)

    def _close_devices(self) -> None:
        errors: list[BaseException] = []
        while self.devices:
            d = self.devices.pop()
            try:
                d.close()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close device fds, detach from the container, close the group fd (idempotent)."""
        if self.closed:
            return
        try:
            self.unset_container()
        finally:
            self._close_fd()
            if self.container is not None and self in self.container.groups:
                # the kernel detaches on release anyway
                if self.container.groups == [self]:
                    self.container._release_iommu()
                self.container.groups.remove(self)
            self.container = None

    def __repr__(self) -> str:
        return f"<Group {self.number} {'closed' if self.closed else f'fd={self._fd}'}>"


def _busy_hint(path: str, backend: Backend, number: int | None = None) -> str:
    holders = holders_of(path, backend)
    if holders:
        who = ", ".join(f"pid {pid} ({comm}) fd {fd}" for pid, fd, comm in holders[:5])
        return f"{path} is already open (a group opens once): held by {who}"
    # the iommufd path: an open VFIO cdev of a device in the group makes the group EBUSY
    for bdf in iommu_group_devices(backend.sysfs_root, number) if number is not None else ():
        for name in vfio_cdev_names(backend.sysfs_root, bdf):
            cdev = f"{CDEV_DIR}/{name}"
            held = holders_of(cdev, backend)
            mine = [fd for pid, fd, _ in held if pid == os.getpid()]
            if mine:
                return (f"this process holds {cdev} ({bdf}, fd {mine[0]}) open through iommufd: a "
                        f"device's cdev and its legacy group {path} exclude each other; close the "
                        "cdev (the iommufd opened device) before opening the group, or keep using iommufd")
            if held:
                who = ", ".join(f"pid {pid} ({comm}) fd {fd}" for pid, fd, comm in held[:5])
                return (f"{cdev} ({bdf}) is open through iommufd by {who}: a device's cdev and its "
                        f"legacy group {path} exclude each other")
    return (f"{path} is already open (a group opens once) by a process this one cannot inspect "
            f"(try: sudo fuser -v {path})")


register_hint(ioctls.VFIO_GROUP_SET_CONTAINER.name, errno.EPERM,
              "the group is not viable: every device in its IOMMU group must be bound to vfio-pci "
              "(or unbound); see /sys/kernel/iommu_groups/N/devices/*/driver")
register_hint(ioctls.VFIO_GROUP_SET_CONTAINER.name, errno.EINVAL, "the group is already attached to a container")
register_hint(ioctls.VFIO_GROUP_UNSET_CONTAINER.name, errno.EBUSY,
              "device fds of this group are still open: close them first")
register_hint(ioctls.VFIO_GROUP_GET_DEVICE_FD.name, errno.EINVAL,
              "the group's container has no IOMMU yet: call Container.set_iommu() first")
register_hint(ioctls.VFIO_GROUP_GET_DEVICE_FD.name, errno.ENODEV,
              "no such device in this group, or it is not bound to vfio-pci")
