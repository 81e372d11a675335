"""PCI device discovery: devices, drivers, IOMMU groups, SR-IOV, NUMA node, reset methods.

Everything is read from sysfs (no ``lspci`` parsing) through a small :class:`DeviceSource`
interface with two implementations:

* :class:`PyudevSource` enumerates the running kernel's PCI devices with pyudev (libudev) and reads
  their attributes through it; links libudev does not resolve (``iommu_group``, ``physfn``,
  ``virtfn*``) are read from the device's sys_path.
* :class:`SysfsTreeSource` reads a directory laid out like ``/sys`` (``bus/pci/devices/BDF/...``,
  ``kernel/iommu_groups/N/devices/``): the mock backend's ``sysfs_root`` or a hand-made fixture.

:func:`open_source` picks one for a sysfs root. Results are frozen dataclasses.

Example (on the mock kernel's tree)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> src = open_source(MockBackend().sysfs_root)
    >>> [d.bdf for d in src.devices()]  # doctest: +SKIP
    ['0000:00:03.0', ...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import pyudev

from ..errors import ArgumentError, NotFoundError
from ..seam import Backend, get_backend
from ..util.bdf import InvalidBdfError, is_bdf, is_vfio_driver, normalize_bdf


#: Drivers that leave DMA ownership to user space (``driver_managed_dma`` in the kernel), so a
#: group member bound to one of them does not make the group non-viable.
DMA_SAFE_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})

#: PCI base class -> name (the PCI code and ID assignment specification's base classes).
PCI_CLASSES = {
    0x00: "Unclassified device", 0x01: "Mass storage controller", 0x02: "Network controller",
    0x03: "Display controller", 0x04: "Multimedia controller", 0x05: "Memory controller",
    0x06: "Bridge", 0x07: "Communication controller", 0x08: "Generic system peripheral",
    0x09: "Input device controller", 0x0A: "Docking station", 0x0B: "Processor",
    0x0C: "Serial bus controller", 0x0D: "Wireless controller", 0x0E: "Intelligent controller",
    0x0F: "Satellite communications controller", 0x10: "Encryption controller",
    0x11: "Signal processing controller", 0x12: "Processing accelerators",
    0x13: "Non-Essential Instrumentation", 0x40: "Coprocessor", 0xFF: "Unassigned class",
}


@dataclass(frozen=True)
class HostPaths:
    """Where the host's kernel interfaces live: ``/sys``, ``/proc``, ``/dev`` and pyvfio's state.

    Tests point these at a fake tree (:meth:`under`); the real host uses :meth:`real`.
    """

    sys: str = "/sys"
    proc: str = "/proc"
    dev: str = "/dev"
    #: Where bind remembers original drivers (survives between CLI runs, not across reboots).
    state: str = "/run/pyvfio"

    @classmethod
    def real(cls) -> "HostPaths":
        return cls()

    @classmethod
    def under(cls, root: str) -> "HostPaths":
        """A fake host: ``root/sys``, ``root/proc``, ``root/dev``, ``root/run/pyvfio``."""
        j = os.path.join
        return cls(j(root, "sys"), j(root, "proc"), j(root, "dev"), j(root, "run", "pyvfio"))

    @property
    def is_live(self) -> bool:
        """True when ``proc`` is this process's own /proc (so pids, netns and ioctls match)."""
        return os.path.realpath(self.proc) == "/proc"


class DeviceNotFoundError(NotFoundError):
    """No PCI device (or IOMMU group) of that name in this sysfs tree."""



def is_dma_safe_driver(driver: str | None) -> bool:
    """True when a device on ``driver`` does not stop its group from being viable."""
    return driver is None or driver in DMA_SAFE_DRIVERS or is_vfio_driver(driver)


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs describes it."""

    bdf: str
    vendor: int
    device: int
    class_code: int
    sys_path: str
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None
    revision: int | None = None
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: int | None = None
    numa_node: int | None = None
    #: ``reset_method`` attribute (kernel >= 5.15), in the kernel's order; None if the kernel has
    #: no such attribute, () if it has it but lists nothing.
    reset_methods: tuple[str, ...] | None = None
    #: The ``reset`` attribute exists (the kernel found at least one way to reset the function).
    has_reset: bool = False
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    physfn: str | None = None
    virtfns: tuple[str, ...] = ()
    modalias: str | None = None

    @property
    def ids(self) -> str:
        """``vendor:device`` in lspci -n's form (``1234:11e8``)."""
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def group(self) -> int | None:
        """The IOMMU group number (``iommu_group``), None without an IOMMU."""
        return self.iommu_group

    @property
    def class_name(self) -> str:
        return PCI_CLASSES.get(self.class_code >> 16, f"class {self.class_code >> 16:#04x}")

    @property
    def is_bridge(self) -> bool:
        return self.class_code >> 16 == 0x06

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def resettable(self) -> bool:
        """True when the kernel can reset the function (needed for a clean hand-over to a guest)."""
        if self.reset_methods is not None:
            return len(self.reset_methods) > 0
        return self.has_reset

    def to_dict(self) -> dict[str, object]:
        return {
            "bdf": self.bdf,
            "vendor": f"{self.vendor:04x}",
            "device": f"{self.device:04x}",
            "ids": self.ids,
            "class": f"{self.class_code:06x}",
            "class_name": self.class_name,
            "subsystem_vendor": None if self.subsystem_vendor is None else f"{self.subsystem_vendor:04x}",
            "subsystem_device": None if self.subsystem_device is None else f"{self.subsystem_device:04x}",
            "revision": self.revision,
            "driver": self.driver,
            "driver_override": self.driver_override,
            "iommu_group": self.iommu_group,
            "numa_node": self.numa_node,
            "reset_methods": None if self.reset_methods is None else list(self.reset_methods),
            "resettable": self.resettable,
            "sriov_totalvfs": self.sriov_totalvfs,
            "sriov_numvfs": self.sriov_numvfs,
            "physfn": self.physfn,
            "virtfns": list(self.virtfns),
        }


@dataclass(frozen=True)
class Viability:
    """Whether VFIO can use a group: every member must be unbound or on a DMA-safe driver."""

    viable: bool
    #: Members on a host driver that uses the kernel's DMA API (they make the group non-viable).
    blockers: tuple[PciDevice, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "viable": self.viable,
            "reason": self.reason,
            "blockers": [{"bdf": d.bdf, "driver": d.driver, "ids": d.ids} for d in self.blockers],
        }


@dataclass(frozen=True)
class IommuGroup:
    """An IOMMU group: the smallest set of devices the IOMMU can isolate from the rest."""

    number: int
    devices: tuple[PciDevice, ...]
    #: Members that are not PCI functions (platform devices...), by sysfs name.
    others: tuple[str, ...] = ()
    #: kernel/iommu_groups/N/type (DMA, DMA-FQ, identity, blocked), if the kernel exposes it.
    type: str | None = None

    @property
    def viability(self) -> Viability:
        blockers = tuple(d for d in self.devices if not is_dma_safe_driver(d.driver))
        if not blockers:
            return Viability(True, (), "every member is unbound or on a VFIO/DMA-safe driver")
        names = ", ".join(f"{d.bdf} ({d.ids}) on {d.driver}" for d in blockers)
        return Viability(False, blockers, f"bound to a host driver: {names}")

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.number,
            "type": self.type,
            "devices": [d.bdf for d in self.devices],
            "others": list(self.others),
            **self.viability.to_dict(),
        }


@dataclass(frozen=True)
class Usability:
    """Whether a device can be opened through VFIO right now, and why not."""

    usable: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"usable": self.usable, "reason": self.reason}


@runtime_checkable
class DeviceSource(Protocol):
    """Where PCI devices and IOMMU groups come from."""

    #: The sysfs root this source describes ("/sys" for the running kernel).
    sysfs_root: str

    def devices(self) -> list[PciDevice]:
        """Every PCI function, sorted by BDF."""
        ...

    def device(self, bdf: str) -> PciDevice:
        """One function; DeviceNotFoundError if absent, InvalidBdfError if malformed."""
        ...

    def groups(self) -> dict[int, IommuGroup]:
        """Every IOMMU group by number."""
        ...

    def group(self, number: int) -> IommuGroup:
        """One group; DeviceNotFoundError if absent."""
        ...


# -- attribute parsing shared by both sources ------------------------------------------------
def _int(text: str | None, base: int = 0) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("ascii", "replace").strip()
    except OSError:
        return None


def _link_name(path: str) -> str | None:
    """Basename of a sysfs link's target; a plain file holding the name is accepted too."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        pass
    if os.path.isfile(path):
        return _read(path) or None
    return None


def _build(bdf: str, sys_path: str, attr: Callable[[str], str | None], driver: str | None) -> PciDevice:
    numa = _int(attr("numa_node"), 10)
    reset_method = attr("reset_method")
    vfns = []
    try:
        names = os.listdir(sys_path)
    except OSError:
        names = []
    for name in names:
        if name.startswith("virtfn") and name[6:].isdigit():
            target = _link_name(os.path.join(sys_path, name))
            if target:
                vfns.append((int(name[6:]), target))
    group = _link_name(os.path.join(sys_path, "iommu_group"))
    override = attr("driver_override")
    return PciDevice(
        bdf=bdf,
        vendor=_int(attr("vendor"), 16) or 0,
        device=_int(attr("device"), 16) or 0,
        class_code=_int(attr("class"), 16) or 0,
        sys_path=sys_path,
        subsystem_vendor=_int(attr("subsystem_vendor"), 16),
        subsystem_device=_int(attr("subsystem_device"), 16),
        revision=_int(attr("revision"), 16),
        driver=driver,
        driver_override=None if override in (None, "", "(null)") else override,
        iommu_group=_int(group, 10) if group else None,
        numa_node=None if numa is None or numa < 0 else numa,
        reset_methods=None if reset_method is None else tuple(reset_method.split()),
        has_reset="reset" in names,
        sriov_totalvfs=_int(attr("sriov_totalvfs"), 10),
        sriov_numvfs=_int(attr("sriov_numvfs"), 10),
        physfn=_link_name(os.path.join(sys_path, "physfn")),
        virtfns=tuple(t for _, t in sorted(vfns)),
        modalias=attr("modalias"),
    )


class _GroupsMixin:
    sysfs_root: str

    def devices(self) -> list[PciDevice]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _group_members(self) -> dict[int, list[str]]:
        base = os.path.join(self.sysfs_root, "kernel", "iommu_groups")
        out: dict[int, list[str]] = {}
        try:
            entries = os.listdir(base)
        except OSError:
            return out
        for name in entries:
            if name.isdigit():
                try:
                    out[int(name)] = sorted(os.listdir(os.path.join(base, name, "devices")))
                except OSError:
                    out[int(name)] = []
        return out

    def groups(self) -> dict[int, IommuGroup]:
        devs = {d.bdf: d for d in self.devices()}
        members = self._group_members()
        # A device whose iommu_group link points at a group the groups directory lacks still counts.
        for d in devs.values():
            if d.iommu_group is not None and d.bdf not in members.setdefault(d.iommu_group, []):
                members[d.iommu_group].append(d.bdf)
        out = {}
        for n, names in sorted(members.items()):
            pci = tuple(devs[x] for x in sorted(names) if x in devs)
            others = tuple(x for x in sorted(names) if x not in devs)
            gtype = _read(os.path.join(self.sysfs_root, "kernel", "iommu_groups", str(n), "type"))
            out[n] = IommuGroup(n, pci, others, gtype)
        return out

    def group(self, number: int) -> IommuGroup:
        try:
            return self.groups()[int(number)]
        except KeyError:
            raise DeviceNotFoundError(
                2, f"no IOMMU group {number}", op="iommu_group",
                path=os.path.join(self.sysfs_root, "kernel", "iommu_groups", str(number)),
                hint="list groups with `pyvfio group`; no groups at all means no IOMMU is enabled "
                     "(see `pyvfio doctor`)",
            ) from None


def _not_found(root: str, bdf: str) -> DeviceNotFoundError:
    return DeviceNotFoundError(
        2, f"no PCI device {bdf}", op="pci_device",
        path=os.path.join(root, "bus", "pci", "devices", bdf),
        hint="list devices with `pyvfio ls`",
    )


class SysfsTreeSource(_GroupsMixin):
    """Reads a directory laid out like /sys (the mock backend's tree, fixtures, or /sys itself)."""

    def __init__(self, sysfs_root: str) -> None:
        self.sysfs_root = sysfs_root

    def _pci_dir(self) -> str:
        return os.path.join(self.sysfs_root, "bus", "pci", "devices")

    def _one(self, bdf: str) -> PciDevice:
        path = os.path.join(self._pci_dir(), bdf)
        return _build(bdf, path, lambda a: _read(os.path.join(path, a)),
                      _link_name(os.path.join(path, "driver")))

    def devices(self) -> list[PciDevice]:
        try:
            names = os.listdir(self._pci_dir())
        except OSError:
            return []
        return [self._one(n) for n in sorted(names) if is_bdf(n)]

    def device(self, bdf: str) -> PciDevice:
        bdf = normalize_bdf(bdf)
        if not os.path.isdir(os.path.join(self._pci_dir(), bdf)):
            raise _not_found(self.sysfs_root, bdf)
        return self._one(bdf)

    def __repr__(self) -> str:
        return f"<SysfsTreeSource {self.sysfs_root}>"


class PyudevSource(_GroupsMixin):
    """The running kernel's PCI devices, enumerated with pyudev."""

    def __init__(self, context: Any = None) -> None:
        self._pyudev = pyudev
        self.context: Any = context if context is not None else pyudev.Context()
        self.sysfs_root = str(self.context.sys_path)

    def _convert(self, dev: object) -> PciDevice:
        attrs = dev.attributes  # type: ignore[attr-defined]

        def attr(name: str) -> str | None:
            try:
                value = attrs.get(name)
            except OSError:
                return None
            return None if value is None else value.decode("ascii", "replace").strip()

        return _build(dev.sys_name, dev.sys_path, attr, dev.driver)  # type: ignore[attr-defined]

    def devices(self) -> list[PciDevice]:
        found = [self._convert(d) for d in self.context.list_devices(subsystem="pci")]
        return sorted(found, key=lambda d: d.bdf)

    def device(self, bdf: str) -> PciDevice:
        bdf = normalize_bdf(bdf)
        try:
            dev = self._pyudev.Devices.from_name(self.context, "pci", bdf)
        except self._pyudev.DeviceNotFoundError:
            raise _not_found(self.sysfs_root, bdf) from None
        return self._convert(dev)

    def __repr__(self) -> str:
        return f"<PyudevSource {self.sysfs_root}>"


def open_source(sysfs_root: str | None = None, *, backend: Backend | str | None = None) -> DeviceSource:
    """The source for ``sysfs_root``: pyudev for the running kernel's /sys, else a tree reader.

    Without ``sysfs_root`` it is the sysfs of ``backend`` (default: ``$PYVFIO_BACKEND``, as for
    ``open_device``), so discovery lists the very devices the kernel objects open: the mock's
    under ``PYVFIO_BACKEND=mock``, the host's otherwise.
    """
    if sysfs_root is None:
        sysfs_root = get_backend(backend).sysfs_root
    elif backend is not None:
        raise ArgumentError("open_source takes a sysfs_root or a backend, not both")
    if os.path.realpath(sysfs_root) == "/sys":
        try:
            return PyudevSource()
        except ImportError:  # pyudev or libudev missing: sysfs itself still works
            pass
    return SysfsTreeSource(sysfs_root)


def usability(dev: PciDevice, group: IommuGroup | None) -> Usability:
    """Can ``dev`` be opened through VFIO now? The reason says what stands in the way."""
    if dev.iommu_group is None or group is None:
        return Usability(False, "no IOMMU group (IOMMU off or not present; see `pyvfio doctor`)")
    if not is_vfio_driver(dev.driver):
        on = f"on {dev.driver}" if dev.driver else "not bound"
        return Usability(False, f"{on}; bind it with `pyvfio bind {dev.bdf}`")
    v = group.viability
    if not v.viable:
        return Usability(False, f"group {group.number} not viable: {v.reason}")
    return Usability(True, f"bound to {dev.driver}, group {group.number} viable")


@dataclass(frozen=True)
class DeviceRow:
    """One line of ``pyvfio ls``: the device, its group and whether VFIO can use it."""

    device: PciDevice
    usability: Usability
    group: IommuGroup | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, object]:
        return {**self.device.to_dict(), "vfio_usable": self.usability.usable,
                "vfio_reason": self.usability.reason}


def survey(source: DeviceSource, devices: Iterable[PciDevice] | None = None) -> list[DeviceRow]:
    """Every device (or the given ones) with its group and VFIO usability, groups read once."""
    groups = source.groups()
    rows = []
    for d in (source.devices() if devices is None else devices):
        g = groups.get(d.iommu_group) if d.iommu_group is not None else None
        rows.append(DeviceRow(d, usability(d, g), g))
    return rows


def _id_filter(ids: str | Iterable[str]) -> list[tuple[int, int | None]]:
    out = []
    for spec in ([ids] if isinstance(ids, str) else list(ids)):
        vendor, _, device = spec.strip().lower().partition(":")
        try:
            out.append((int(vendor, 16), int(device, 16) if device not in ("", "*") else None))
        except ValueError:
            raise ArgumentError(f"PCI ids {spec!r}: want 'vvvv:dddd' in hex (lspci -n), e.g. "
                                "'1234:11e8', or 'vvvv' / 'vvvv:*' for any device of a vendor") from None
    return out


def find_devices(ids: str | Iterable[str] | None = None, driver: str | None = None, *,
                 backend: Backend | str | None = None) -> list[PciDevice]:
    """The PCI devices of ``backend``'s sysfs (default ``$PYVFIO_BACKEND``: the world that
    ``open_device`` opens), filtered by ``ids`` ("1234:11e8", "8086:*", or several) and by the
    bound ``driver`` ("vfio-pci"; "" for unbound ones). Each record has ``.bdf``, ``.ids``,
    ``.driver`` and ``.group`` (the IOMMU group), in BDF order.

    Example (mock)::

        >>> from pyvfio.seam.mock import MockBackend
        >>> [(d.bdf, d.ids, d.driver, d.group) for d in find_devices("1234:11e8", backend=MockBackend())]
        [('0000:00:03.0', '1234:11e8', 'vfio-pci', 3)]
    """
    wanted = _id_filter(ids) if ids is not None else None
    out = []
    for d in open_source(backend=backend).devices():
        if wanted is not None and not any(d.vendor == v and (dev is None or d.device == dev) for v, dev in wanted):
            continue
        if driver is not None and (d.driver or "") != driver:
            continue
        out.append(d)
    return out


__all__ = [
    "find_devices",
    "DeviceSource", "PyudevSource", "SysfsTreeSource", "open_source", "PciDevice", "IommuGroup",
    "Viability", "Usability", "DeviceRow", "survey", "usability", "normalize_bdf",
    "is_vfio_driver", "is_dma_safe_driver", "InvalidBdfError", "DeviceNotFoundError",
    "DMA_SAFE_DRIVERS", "HostPaths",
]
