"""Mock VFIO core: the machine topology, /dev/vfio/vfio (containers) and /dev/vfio/N (groups).

Follows drivers/vfio/container.c and drivers/vfio/group.c (6.x):

* The container answers GET_API_VERSION (0), CHECK_EXTENSION (asks the IOMMU drivers; once an
  IOMMU is set only that one) and SET_IOMMU (EINVAL without a group or when already set; ENODEV
  when no driver supports the type; the attach error, e.g. EPERM without interrupt remapping,
  when a driver refuses a group). Every other request goes to the IOMMU driver object chosen by
  SET_IOMMU, EINVAL before that (so MAP_DMA before SET_IOMMU is EINVAL, as in the kernel). The
  driver object dispatches by request number, so VFIO_IOMMU_DIRTY_PAGES (type1) and
  VFIO_IOMMU_SPAPR_REGISTER_MEMORY (sPAPR) — the same number — reach whichever driver is set.
* A group opens once (EBUSY otherwise), reports VIABLE when no device of the IOMMU group is
  bound to a host driver, SET_CONTAINER refuses a non-viable group with EPERM (the iommu core's
  DMA-ownership claim), an already attached group with EINVAL, a non-container fd with EBADFD;
  UNSET_CONTAINER gives EINVAL without a container and EBUSY while device fds are open;
  GET_DEVICE_FD gives ENODEV for a device that is not in the group or not bound to vfio-pci and
  EINVAL before the container has an IOMMU. Device fds hold the group file; closing the group
  file detaches it from its container, and the last group leaving a container releases the IOMMU
  (and with it every mapping).

The topology (which devices exist, their IOMMU groups and drivers) is described in a fake sysfs
tree under ``kernel.sysfs_root`` laid out like the kernel's, so discovery code reads the same
files on the mock and on a real machine::

    bus/pci/devices/BDF/{vendor,device,class,iommu_group -> ../../../kernel/iommu_groups/N,
                         driver -> ../../../bus/pci/drivers/DRV}
    kernel/iommu_groups/N/devices/BDF -> ../../../../bus/pci/devices/BDF
    module/vfio_iommu_type1/parameters/{dma_entry_limit,allow_unsafe_interrupts}

Simulated PCI devices (:mod:`pyvfio.mockkernel.pci`) are added with :func:`add_device`; their
DMA goes through :meth:`MockGroup.translate` / :meth:`MockGroup.dma_read` /
:meth:`MockGroup.dma_write`, which consult the container's IOMMU and log a DMAR-style fault to
``kernel.dmesg`` when the IOVA is unmapped or lacks the permission.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import ioctls
from ..uapi import ffi
from .core import KernelError, MockFile, MockKernel, handles

NAME = "vfio"

#: Drivers that leave a group viable (driver_managed_dma in the kernel).
VFIO_FRIENDLY_DRIVERS = frozenset({"vfio-pci", "pci-stub"})


class IommuFault(KernelError):
    """A device access the IOMMU refused (unmapped IOVA or missing permission)."""


@dataclass
class PciIdentity:
    """The sysfs identity of a PCI function with no simulated behaviour (e.g. a NIC left on its
    host driver). Simulated devices from :mod:`pyvfio.mockkernel.pci` carry the same names."""

    name: str
    vendor_id: int
    device_id: int
    class_code: int
    subsystem_vendor_id: int = 0x1AF4
    subsystem_id: int = 0x1100


@dataclass
class DeviceEntry:
    name: str
    sim: Any
    group: "MockIommuGroup"
    driver: str | None


@dataclass
class MockIommuGroup:
    """An IOMMU group: its devices and the VFIO group state when one exists."""

    number: int
    devices: list[DeviceEntry] = field(default_factory=list)
    #: Reserved IOVA regions of the group (start, end inclusive), e.g. the x86 MSI window.
    reserved: list[tuple[int, int]] = field(default_factory=list)
    #: IOVA aperture of the IOMMU domain (start, end inclusive).
    aperture: tuple[int, int] = (0, (1 << 39) - 1)
    #: The IOMMU supports interrupt remapping (else type1 needs allow_unsafe_interrupts).
    interrupt_remapping: bool = True
    vfio: "MockGroup | None" = None

    @property
    def viable(self) -> bool:
        return all(d.driver is None or d.driver in VFIO_FRIENDLY_DRIVERS for d in self.devices)

    def has_vfio_device(self) -> bool:
        return any(d.driver == "vfio-pci" for d in self.devices)


@dataclass
class MockTask:
    """The calling process as the kernel's memory accounting sees it.

    ``rlimit_memlock`` and ``cap_ipc_lock`` default to the real process's values (read at each
    call), so a child that lowers its RLIMIT_MEMLOCK or drops CAP_IPC_LOCK sees the same outcome
    on the mock as on the real kernel. ``pinned`` is what the mock's IOMMUs pinned; the
    ``locked_vm`` the limit is checked against is the real VmLck plus ``pinned``.
    """

    pinned: int = 0
    rlimit_override: int | None = None
    cap_ipc_lock_override: bool | None = None

    def rlimit_memlock(self) -> int:
        if self.rlimit_override is not None:
            return self.rlimit_override
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return (1 << 64) - 1 if soft == resource.RLIM_INFINITY else soft

    def cap_ipc_lock(self) -> bool:
        if self.cap_ipc_lock_override is not None:
            return self.cap_ipc_lock_override
        return bool(_cap_eff() & (1 << 14))  # CAP_IPC_LOCK

    def locked_vm(self) -> int:
        return _vmlck_bytes() + self.pinned


def _cap_eff() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _vmlck_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    return 0


class VfioState:
    """Per-kernel VFIO state: topology, IOMMU drivers, the simulated task."""

    def __init__(self, kernel: MockKernel) -> None:
        self.kernel = kernel
        self.groups: dict[int, MockIommuGroup] = {}
        self.devices: dict[str, DeviceEntry] = {}
        #: IOMMU driver classes in registration order (the kernel's iommu_drivers_list).
        self.iommu_drivers: list[type["IommuDriver"]] = []
        self.task = MockTask()

    # -- module parameters live in the fake sysfs, so tests write them like on a real host --
    def param_path(self, module: str, name: str) -> str:
        return os.path.join(self.kernel.sysfs_root, "module", module, "parameters", name)

    def read_param(self, module: str, name: str, default: str) -> str:
        try:
            with open(self.param_path(module, name)) as f:
                return f.read().strip()
        except OSError:
            return default

    def write_param(self, module: str, name: str, value: str) -> None:
        path = self.param_path(module, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{value}\n")


def state(kernel: MockKernel) -> VfioState:
    st = kernel.state.get(NAME)
    if st is None:
        raise KernelError(errno.ENODEV, "vfio subsystem not installed in this mock kernel")
    return st


# ---------------------------------------------------------------------------------------------
# IOMMU drivers (type1, spapr...) plug in here
# ---------------------------------------------------------------------------------------------


class IommuDriver(MockFile):
    """Base of a container's IOMMU backend (the kernel's vfio_iommu_driver_ops + iommu_data).

    Subclasses declare their ioctls with :func:`handles` exactly like files (dispatch by number,
    ENOTTY for unknown requests, as ``vfio_iommu_type1_ioctl`` does) and implement:

    * ``check_extension(cls, iommu, arg) -> int`` (classmethod; ``iommu`` is None before SET_IOMMU),
    * ``__init__(kernel, container, arg)`` (the driver's ``open``; raise KernelError to refuse),
    * ``attach_group(group)`` / ``detach_group(group)`` and ``release()``,
    * ``translate(iova, size, write) -> vaddr`` for the simulated devices' DMA.
    """

    def __init__(self, kernel: MockKernel, container: "ContainerFile", arg: int) -> None:
        super().__init__(kernel, container.path)
        self.container = container
        self.type = arg
        self.groups: list[MockGroup] = []

    @classmethod
    def check_extension(cls, iommu: "IommuDriver | None", arg: int) -> int:
        return 0

    def attach_group(self, group: "MockGroup") -> None:
        self.groups.append(group)

    def detach_group(self, group: "MockGroup") -> None:
        if group in self.groups:
            self.groups.remove(group)

    def translate(self, iova: int, size: int, write: bool) -> int:
        raise IommuFault(errno.EFAULT, "IOMMU driver has no translation")


def register_iommu_driver(kernel: MockKernel, driver: type[IommuDriver]) -> None:
    """Add an IOMMU driver (vfio_register_iommu_driver); SET_IOMMU tries them in order."""
    st = state(kernel)
    if driver not in st.iommu_drivers:
        st.iommu_drivers.append(driver)


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
        from . import pci  # VFIO-B's simulated devices and device file

        dev_file = pci.open_device_file(self.kernel, self, entry.sim)
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
        return MockKernel.read_user(self.translate(iova, size, False, device), size)

    def dma_write(self, iova: int, data: bytes, device: str | None = None) -> None:
        """A device write at ``iova``; on a fault nothing lands (IommuFault, logged)."""
        MockKernel.write_user(self.translate(iova, len(data), True, device), bytes(data))


def _int_arg(arg: Any) -> int:
    if isinstance(arg, int):
        return arg
    return int(ffi.cast("unsigned long", arg))


# ---------------------------------------------------------------------------------------------
# topology and sysfs
# ---------------------------------------------------------------------------------------------


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def _symlink(target: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def _ident(sim: Any, attr: str, default: int) -> int:
    value = getattr(sim, attr, None)
    return int(value) if value is not None else default


def add_device(kernel: MockKernel, sim_device: Any, group: int, driver: str | None = "vfio-pci",
               *, reserved: list[tuple[int, int]] | None = None) -> DeviceEntry:
    """Plug ``sim_device`` (named by its BDF, ``sim_device.name``) into IOMMU group ``group``,
    bound to ``driver`` (None: unbound), and describe it in the fake sysfs.

    ``sim_device`` needs ``name``, ``vendor_id``, ``device_id``, ``class_code`` (24 bits).
    ``reserved`` sets the group's reserved IOVA windows when the group is new (default: the x86
    MSI window 0xfee00000-0xfeefffff).
    """
    st = state(kernel)
    name = str(sim_device.name)
    if name in st.devices:
        raise ValueError(f"mock topology: device {name} already present")
    g = st.groups.get(group)
    if g is None:
        g = MockIommuGroup(group, reserved=list(reserved if reserved is not None
                                                 else [(0xFEE00000, 0xFEEFFFFF)]))
        st.groups[group] = g
    entry = DeviceEntry(name, sim_device, g, driver)
    g.devices.append(entry)
    st.devices[name] = entry
    root = kernel.sysfs_root
    ddir = os.path.join(root, "bus", "pci", "devices", name)
    _write(os.path.join(ddir, "vendor"), f"{_ident(sim_device, 'vendor_id', 0xFFFF):#06x}")
    _write(os.path.join(ddir, "device"), f"{_ident(sim_device, 'device_id', 0xFFFF):#06x}")
    _write(os.path.join(ddir, "class"), f"{_ident(sim_device, 'class_code', 0):#08x}")
    _write(os.path.join(ddir, "subsystem_vendor"), f"{_ident(sim_device, 'subsystem_vendor_id', 0x1AF4):#06x}")
    _write(os.path.join(ddir, "subsystem_device"), f"{_ident(sim_device, 'subsystem_id', 0x1100):#06x}")
    _symlink(f"../../../kernel/iommu_groups/{group}", os.path.join(ddir, "iommu_group"))
    _symlink(f"../../../../bus/pci/devices/{name}",
             os.path.join(root, "kernel", "iommu_groups", str(group), "devices", name))
    _write(os.path.join(root, "kernel", "iommu_groups", str(group), "type"), "DMA")
    _write(os.path.join(root, "kernel", "iommu_groups", str(group), "reserved_regions"),
           "\n".join(f"{lo:#018x} {hi:#018x} msi" for lo, hi in g.reserved))
    _set_driver_link(kernel, entry)
    return entry


def bind_driver(kernel: MockKernel, name: str, driver: str | None) -> None:
    """Rebind a device (what driver_override + drivers_probe or unbind do)."""
    entry = state(kernel).devices[name]
    g = entry.group
    if g.vfio is not None and g.vfio.device_files and entry.driver == "vfio-pci":
        raise KernelError(errno.EBUSY, f"{name} is in use through VFIO")
    entry.driver = driver
    _set_driver_link(kernel, entry)


def _set_driver_link(kernel: MockKernel, entry: DeviceEntry) -> None:
    root = kernel.sysfs_root
    link = os.path.join(root, "bus", "pci", "devices", entry.name, "driver")
    if os.path.lexists(link):
        os.unlink(link)
    if entry.driver:
        os.makedirs(os.path.join(root, "bus", "pci", "drivers", entry.driver), exist_ok=True)
        _symlink(f"../../../bus/pci/drivers/{entry.driver}", link)


def default_machine(kernel: MockKernel) -> None:
    """The machine a plain ``MockKernel()`` simulates (mirrors the x86 test guest):

    * 0000:00:03.0 — edu (1234:11e8) in IOMMU group 3, bound to vfio-pci;
    * 0000:00:02.0 — an e1000e-like NIC (8086:10d3) in IOMMU group 2, on its host driver.
    """
    try:
        from . import pci
    except ImportError:
        pci = None  # type: ignore[assignment]
    edu: Any
    make_edu = getattr(pci, "make_edu", None) if pci is not None else None
    if make_edu is not None:
        edu = make_edu(kernel, "0000:00:03.0")
    else:
        edu = PciIdentity("0000:00:03.0", 0x1234, 0x11E8, 0x00FF00)
    add_device(kernel, edu, group=3, driver="vfio-pci")
    make_nic = getattr(pci, "make_e1000e", None) if pci is not None else None
    nic = (make_nic(kernel, "0000:00:02.0") if make_nic is not None
           else PciIdentity("0000:00:02.0", 0x8086, 0x10D3, 0x020000))
    add_device(kernel, nic, group=2, driver="e1000e")


def shutdown(kernel: MockKernel) -> None:
    """Release what the simulated devices hold (BAR memfds...): the machine is powered off."""
    st = kernel.state.get(NAME)
    if st is None:
        return
    for entry in st.devices.values():
        close = getattr(entry.sim, "close", None)
        if callable(close):
            close()


# ---------------------------------------------------------------------------------------------
# routes
# ---------------------------------------------------------------------------------------------


def _open_container(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    return ContainerFile(kernel, "/dev/vfio/vfio")


def _open_group(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    n = int(m.group(1))
    g = state(kernel).groups.get(n)
    if g is None or not g.has_vfio_device():
        raise KernelError(errno.ENOENT, f"/dev/vfio/{n}: no such VFIO group")
    if g.vfio is not None:
        raise KernelError(errno.EBUSY, f"/dev/vfio/{n}: group already open")
    from .iommufd import group_blocked  # vfio_group_fops_open: cdev_device_open_cnt

    if group_blocked(kernel, n):
        raise KernelError(errno.EBUSY, f"/dev/vfio/{n}: a device of the group is bound through its cdev")
    g.vfio = MockGroup(kernel, f"/dev/vfio/{n}", g)
    return g.vfio


def install(kernel: MockKernel, *, machine: bool = True) -> None:
    """Register /dev/vfio routes, the module parameters and (by default) the default machine."""
    st = VfioState(kernel)
    kernel.state[NAME] = st
    kernel.route(r"/dev/vfio/vfio", _open_container)
    kernel.route(r"/dev/vfio/(\d+)", _open_group)
    st.write_param("vfio_iommu_type1", "dma_entry_limit", "65535")
    st.write_param("vfio_iommu_type1", "allow_unsafe_interrupts", "N")
    st.write_param("vfio", "enable_unsafe_noiommu_mode", "N")
    if machine:
        default_machine(kernel)
