"""Bind PCI devices to vfio-pci and back, safely.

Binding goes through the driver core's sysfs files, the way the kernel documents it:
``BDF/driver/unbind`` (leave the current driver), ``BDF/driver_override`` (which driver may take
the device), ``bus/pci/drivers_probe`` (let that driver probe it). The original driver is
remembered in a small state file so :func:`unbind` can give the device back to it; then VFIO's
``/dev/vfio/N`` node is awaited (the kernel creates it a moment after the probe).

Before touching anything, :func:`find_uses` looks for host use of the device: a block device
below it with a mounted filesystem or active swap, a network interface below it carrying an
address or a route, or its ``/dev/vfio/N`` held open by another process. Binding such a device
is refused (:class:`DeviceInUseError`) unless ``force``.

A group is viable only when every member is unbound or on a DMA-safe driver; binding one device
whose siblings stay on host drivers is refused (:class:`GroupNotViableError`, naming them) unless
``whole_group`` (bind them all) or ``partial`` (bind this one anyway; the result says non-viable).

All writes go through a :class:`DriverCore`, so tests can substitute the kernel's reaction.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ArgumentError, PyvfioError, error_from_errno, from_oserror
from ..seam.host import Host
from .discovery import (
    DeviceSource,
    HostPaths,
    IommuGroup,
    PciDevice,
    Viability,
    is_dma_safe_driver,
    is_vfio_driver,
    normalize_bdf,
)

VFIO_PCI = "vfio-pci"


# -- errors ------------------------------------------------------------------------------------
class DeviceInUseError(PyvfioError):
    """The host uses the device (mounted filesystem, swap, network address/route, open VFIO fd)."""

    def __init__(self, bdf: str, uses: "list[Use]") -> None:
        what = "; ".join(u.what for u in uses)
        super().__init__(errno.EBUSY, f"{bdf} is in use by the host: {what}", op="bind",
                         path=bdf, hint="stop using it first (umount, swapoff, ip addr flush, "
                         "close the VM), or pass --force if you know better")
        self.uses = uses

    def __str__(self) -> str:
        return f"{self.strerror} (hint: {self.hint})"

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "uses": [u.to_dict() for u in self.uses]}


class GroupNotViableError(PyvfioError):
    """Binding would leave the IOMMU group non-viable: a sibling stays on a host driver."""

    def __init__(self, bdf: str, group: IommuGroup, viability: Viability) -> None:
        names = ", ".join(f"{d.bdf} ({d.ids}, driver {d.driver})" for d in viability.blockers)
        super().__init__(
            errno.EBUSY, f"IOMMU group {group.number} of {bdf} would not be viable: "
            f"sibling {names} stays on a host driver", op="bind", path=bdf,
            hint="bind the whole group (--whole-group), unbind the sibling from its driver, or "
                 "pass --partial to bind this device alone (VFIO cannot use it until the group is viable)")
        self.group = group
        self.viability = viability

    def __str__(self) -> str:
        return f"{self.strerror} (hint: {self.hint})"

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "group": self.group.number, **self.viability.to_dict()}


class BindTimeoutError(PyvfioError):
    """The driver did not take the device, or /dev/vfio/N did not appear, in time."""


# -- host use ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Use:
    """One way the host uses a device."""

    kind: str  # "mount", "swap", "net-address", "net-route", "vfio-fd"
    bdf: str
    what: str

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "bdf": self.bdf, "what": self.what}


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def _below(paths: HostPaths, dev: PciDevice, cls: str) -> list[str]:
    """Names in /sys/class/<cls> whose device lies below ``dev`` in the device tree."""
    base = os.path.join(paths.sys, "class", cls)
    top = os.path.realpath(dev.sys_path) + os.sep
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted(n for n in names if os.path.realpath(os.path.join(base, n)).startswith(top))


def _block_family(paths: HostPaths, names: list[str]) -> dict[str, str]:
    """Block devices ``names`` plus their partitions and holders (dm, md), name -> major:minor."""
    base = os.path.join(paths.sys, "class", "block")
    out: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = (_read(os.path.join(base, name, "dev")) or "").strip()
        for sub in ("holders",):
            try:
                todo.extend(os.listdir(os.path.join(base, name, sub)))
            except OSError:
                pass
        # partitions appear as subdirectories holding a "partition" file
        real = os.path.realpath(os.path.join(base, name))
        try:
            for child in os.listdir(real):
                if os.path.exists(os.path.join(real, child, "partition")):
                    todo.append(child)
        except OSError:
            pass
    return out


def _block_uses(paths: HostPaths, dev: PciDevice) -> list[Use]:
    fam = _block_family(paths, _below(paths, dev, "block"))
    if not fam:
        return []
    uses = []
    by_devno = {v: k for k, v in fam.items() if v}
    for line in (_read(os.path.join(paths.proc, "self", "mountinfo")) or "").splitlines():
        f = line.split()
        if len(f) < 10 or "-" not in f:
            continue
        sep = f.index("-")
        devno, mnt, source = f[2], f[4], f[sep + 2] if len(f) > sep + 2 else ""
        name = by_devno.get(devno) or (os.path.basename(source) if source.startswith("/dev/")
                                       and os.path.basename(source) in fam else None)
        if name:
            uses.append(Use("mount", dev.bdf, f"/dev/{name} is mounted on {mnt}"))
    for line in (_read(os.path.join(paths.proc, "swaps")) or "").splitlines()[1:]:
        f = line.split()
        if not f:
            continue
        name = os.path.basename(f[0]) if f[0].startswith("/dev/") else None
        if name not in fam and f[0].startswith("/dev/") and paths.is_live:
            try:  # /dev/disk/by-..., /dev/mapper/... : compare device numbers
                st = os.stat(f[0])
                name = by_devno.get(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
            except OSError:
                name = None
        if name in fam:
            uses.append(Use("swap", dev.bdf, f"/dev/{name} is active swap ({f[0]})"))
    return uses


def _ipv4_address(ifname: str) -> str | None:
    """The interface's IPv4 address (SIOCGIFADDR) in this network namespace, or None."""
    SIOCGIFADDR = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError:
            return None  # EADDRNOTAVAIL: no address; ENODEV: gone
    return socket.inet_ntoa(res[20:24])


def _net_uses(paths: HostPaths, dev: PciDevice) -> list[Use]:
    ifaces = _below(paths, dev, "net")
    if not ifaces:
        return []
    uses = []
    for line in (_read(os.path.join(paths.proc, "net", "if_inet6")) or "").splitlines():
        f = line.split()
        if len(f) >= 6 and f[5] in ifaces and int(f[3], 16) != 0x20:  # 0x20: link-local scope
            addr = str(ipaddress.IPv6Address(bytes.fromhex(f[0])))
            uses.append(Use("net-address", dev.bdf, f"{f[5]} has address {addr}/{int(f[2], 16)}"))
    for line in (_read(os.path.join(paths.proc, "net", "route")) or "").splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[0] in ifaces:
            dst = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
            mask = bin(int(f[7], 16)).count("1")
            uses.append(Use("net-route", dev.bdf, f"{f[0]} carries route {dst}/{mask}"))
    for line in (_read(os.path.join(paths.proc, "net", "ipv6_route")) or "").splitlines():
        f = line.split()
        if len(f) >= 10 and f[9] in ifaces:
            dst, plen = f[0], int(f[1], 16)
            if dst.startswith("fe80") or dst.startswith("ff"):
                continue  # link-local and multicast routes exist on every interface that is up
            if int(f[8], 16) & 0x80000000:  # RTF_LOCAL: route for one of its own addresses
                continue
            addr = str(ipaddress.IPv6Address(bytes.fromhex(dst)))
            uses.append(Use("net-route", dev.bdf, f"{f[9]} carries route {addr}/{plen}"))
    if paths.is_live:
        for name in ifaces:
            a = _ipv4_address(name)
            if a:
                uses.append(Use("net-address", dev.bdf, f"{name} has address {a}"))
    seen: set[str] = set()
    return [u for u in uses if not (u.what in seen or seen.add(u.what))]  # type: ignore[func-returns-value]


@dataclass(frozen=True)
class Holder:
    pid: int
    comm: str
    path: str

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "comm": self.comm, "path": self.path}


def vfio_holders(paths: HostPaths, nodes: list[str]) -> tuple[list[Holder], int]:
    """Processes (other than this one) with one of ``nodes`` open, and how many pids were unreadable.

    ``nodes`` are host paths such as ``/dev/vfio/5``; /proc/PID/fd links are compared with them.
    """
    me = os.getpid() if paths.is_live else -1
    want = set(nodes)
    found: list[Holder] = []
    denied = 0
    try:
        pids = [int(p) for p in os.listdir(paths.proc) if p.isdigit()]
    except OSError:
        return [], 0
    for pid in sorted(pids):
        if pid == me:
            continue
        fd_dir = os.path.join(paths.proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # exited
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in want:
                comm = (_read(os.path.join(paths.proc, str(pid), "comm")) or "?").strip()
                found.append(Holder(pid, comm, target))
    return found, denied


def vfio_nodes(dev: PciDevice) -> list[str]:
    """Host paths through which VFIO exposes ``dev``: /dev/vfio/N and /dev/vfio/devices/vfioX."""
    out = []
    if dev.iommu_group is not None:
        out.append(f"/dev/vfio/{dev.iommu_group}")
    try:
        out += [f"/dev/vfio/devices/{n}" for n in sorted(os.listdir(os.path.join(dev.sys_path, "vfio-dev")))]
    except OSError:
        pass
    return out


def find_uses(paths: HostPaths, dev: PciDevice) -> list[Use]:
    """Every host use of ``dev`` found: mounts, swap, network addresses/routes, open VFIO fds."""
    uses = _block_uses(paths, dev) + _net_uses(paths, dev)
    holders, _ = vfio_holders(paths, vfio_nodes(dev))
    uses += [Use("vfio-fd", dev.bdf, f"pid {h.pid} ({h.comm}) holds {h.path} open") for h in holders]
    return uses


# -- the driver core -------------------------------------------------------------------------
class DriverCore:
    """The kernel's driver-core files under ``paths.sys``; each write is one step of a bind.

    The writes go to ``host`` (:class:`pyvfio.seam.host.Host`; default: the host at ``paths``),
    which gives the kernel's reaction; refusals become typed errors here.
    """

    def __init__(self, paths: HostPaths, host: Host | None = None) -> None:
        self.paths = paths
        self.host = host if host is not None else Host.at(paths.sys, paths.proc, paths.dev, paths.state)

    def _write(self, path: str, value: str, op: str) -> None:
        try:
            self.host.write(path, value)
        except PyvfioError:
            raise
        except OSError as e:
            raise self.translate(e, e.filename or path, op) from None

    @staticmethod
    def translate(e: OSError, path: str, op: str) -> PyvfioError:
        """The typed error for a refused driver-core write, with the usual cause as hint."""
        hint = None
        if e.errno == errno.ENODEV and op == "drivers_probe":
            hint = "no driver accepted the device: is the module loaded (modprobe vfio-pci)?"
        elif e.errno == errno.EINVAL and op == "drivers_probe":
            hint = "the probe failed; vfio-pci refuses devices without an IOMMU group (see dmesg)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            hint = "writing sysfs driver files needs root"
        return from_oserror(e, op=op, path=path, hint=hint)

    def dev_path(self, bdf: str, *rest: str) -> str:
        return self.host.dev_path(bdf, *rest)

    def driver_of(self, bdf: str) -> str | None:
        return self.host.driver_of(bdf)

    def unbind(self, bdf: str) -> None:
        """Detach ``bdf`` from its driver (``BDF/driver/unbind``); no-op when unbound."""
        if self.driver_of(bdf) is not None:
            self._write(self.dev_path(bdf, "driver", "unbind"), bdf, "driver/unbind")

    def set_override(self, bdf: str, driver: str | None) -> None:
        """Write ``BDF/driver_override`` (a newline clears it)."""
        self._write(self.dev_path(bdf, "driver_override"), driver or "\n", "driver_override")

    def probe(self, bdf: str) -> None:
        """Ask the driver core to find a driver for ``bdf`` (``bus/pci/drivers_probe``)."""
        self._write(os.path.join(self.paths.sys, "bus", "pci", "drivers_probe"), bdf, "drivers_probe")

    def node_exists(self, group: int) -> bool:
        return self.host.node_exists(group)


# -- remembered drivers --------------------------------------------------------------------------
class DriverMemory:
    """``state/original-drivers.json``: BDF -> the driver it had before pyvfio bound it."""

    def __init__(self, paths: HostPaths) -> None:
        self.path = os.path.join(paths.state, "original-drivers.json")

    def load(self) -> dict[str, dict[str, object]]:
        text = _read(self.path)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, dict[str, object]]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def remember(self, bdf: str, driver: str | None, override: str | None) -> None:
        data = self.load()
        if bdf not in data:  # keep the first (host) driver across repeated binds
            data[bdf] = {"driver": driver, "driver_override": override}
            self._save(data)

    def recall(self, bdf: str) -> dict[str, object] | None:
        return self.load().get(bdf)

    def forget(self, bdf: str) -> None:
        data = self.load()
        if data.pop(bdf, None) is not None:
            self._save(data)


# -- plans and results ---------------------------------------------------------------------------
@dataclass
class Step:
    bdf: str
    action: str  # "unbind", "override", "probe", "clear-override", "wait-node"
    detail: str
    done: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"bdf": self.bdf, "action": self.action, "detail": self.detail, "done": self.done}


@dataclass
class DeviceChange:
    bdf: str
    ids: str
    before: str | None
    after: str | None = None
    target: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"bdf": self.bdf, "ids": self.ids, "driver_before": self.before,
                "driver_after": self.after, "target": self.target}


@dataclass
class BindResult:
    """What :func:`bind` or :func:`unbind` did (or, with ``dry_run``, would do)."""

    verb: str
    bdf: str
    group: int | None
    dry_run: bool
    changes: list[DeviceChange] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)
    viable: bool | None = None
    blockers: list[PciDevice] = field(default_factory=list)
    vfio_node: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "verb": self.verb, "bdf": self.bdf, "group": self.group, "dry_run": self.dry_run,
            "devices": [c.to_dict() for c in self.changes],
            "steps": [s.to_dict() for s in self.steps],
            "uses": [u.to_dict() for u in self.uses],
            "viable": self.viable,
            "blockers": [{"bdf": d.bdf, "ids": d.ids, "driver": d.driver} for d in self.blockers],
            "vfio_node": self.vfio_node,
            "warnings": self.warnings,
        }


def _wait(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _targets(source: DeviceSource, dev: PciDevice, whole_group: bool, want_vfio: bool) -> list[PciDevice]:
    if not whole_group or dev.iommu_group is None:
        return [dev]
    members = source.group(dev.iommu_group).devices
    if want_vfio:  # bind every member that is not already DMA-safe (bridges on pcieport stay)
        return [d for d in members if d.bdf == dev.bdf or not is_dma_safe_driver(d.driver)]
    return [d for d in members if d.bdf == dev.bdf or is_vfio_driver(d.driver)]


def bind(
    source: DeviceSource,
    bdf: str,
    *,
    paths: HostPaths,
    core: DriverCore | None = None,
    driver: str = VFIO_PCI,
    whole_group: bool = False,
    partial: bool = False,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 5.0,
) -> BindResult:
    """Bind ``bdf`` (and with ``whole_group`` its group) to ``driver``, then wait for /dev/vfio/N.

    Refuses, before any write, a device the host uses (:class:`DeviceInUseError`, unless
    ``force``) and a bind that leaves the group non-viable (:class:`GroupNotViableError`, unless
    ``whole_group`` or ``partial``). Remembers each device's original driver for :func:`unbind`.
    If a later device fails, the devices already moved are given back to their drivers.

    Returns a :class:`BindResult`; raises PyvfioError for a refused sysfs write (EACCES without
    root, EINVAL when vfio-pci's probe fails for lack of an IOMMU group), BindTimeoutError when the
    driver did not take the device or the node did not appear within ``timeout`` seconds.
    """
    core = core or DriverCore(paths)
    dev = source.device(bdf)
    if not driver or "/" in driver:
        raise ArgumentError(f"driver name {driver!r} is not a driver name")
    targets = _targets(source, dev, whole_group, True)
    res = BindResult("bind", dev.bdf, dev.iommu_group, dry_run)
    for d in targets:
        res.uses += find_uses(paths, d)
    if dev.iommu_group is not None:
        group = source.group(dev.iommu_group)
        moving = {d.bdf for d in targets}
        blockers = tuple(d for d in group.devices if d.bdf not in moving and not is_dma_safe_driver(d.driver))
        res.viable = not blockers
        res.blockers = list(blockers)
        if blockers and not partial and not dry_run:
            raise GroupNotViableError(dev.bdf, group, Viability(False, blockers, ""))
        if blockers:
            res.warnings.append(GroupNotViableError(dev.bdf, group, Viability(False, blockers, "")).strerror or "")
    else:
        res.warnings.append(f"{dev.bdf} has no IOMMU group: vfio-pci will refuse it (is the IOMMU on?)")
    if res.uses and not force and not dry_run:
        raise DeviceInUseError(dev.bdf, res.uses)
    if res.uses and force:
        res.warnings.append("device in use by the host; binding anyway (--force)")

    for d in targets:
        res.changes.append(DeviceChange(d.bdf, d.ids, d.driver, target=driver))
        if d.driver == driver:
            continue
        if d.driver is not None:
            res.steps.append(Step(d.bdf, "unbind", f"{d.driver}: write {d.bdf} to driver/unbind"))
        res.steps.append(Step(d.bdf, "override", f"write {driver} to driver_override"))
        res.steps.append(Step(d.bdf, "probe", f"write {d.bdf} to bus/pci/drivers_probe"))
    if dev.iommu_group is not None and is_vfio_driver(driver):
        res.steps.append(Step(dev.bdf, "wait-node", f"/dev/vfio/{dev.iommu_group} appears"))
    if dry_run:
        for c in res.changes:
            c.after = c.before
        return res

    memory = DriverMemory(paths)
    moved: list[PciDevice] = []
    try:
        for d in targets:
            if d.driver == driver:
                continue
            if not is_vfio_driver(d.driver):
                memory.remember(d.bdf, d.driver, d.driver_override)
            steps = [s for s in res.steps if s.bdf == d.bdf and s.action != "wait-node"]
            moved.append(d)
            for s in steps:
                if s.action == "unbind":
                    core.unbind(d.bdf)
                elif s.action == "override":
                    core.set_override(d.bdf, driver)
                elif s.action == "probe":
                    core.probe(d.bdf)
                s.done = True
            if not _wait(lambda: core.driver_of(d.bdf) == driver, timeout):
                raise error_from_errno(
                    errno.ETIMEDOUT, op="drivers_probe", path=core.dev_path(d.bdf),
                    hint=f"{driver} did not take {d.bdf}: is the module loaded (modprobe {driver})? see dmesg")
        if dev.iommu_group is not None and is_vfio_driver(driver):
            if not _wait(lambda: core.node_exists(dev.iommu_group), timeout):  # type: ignore[arg-type]
                raise BindTimeoutError(errno.ETIMEDOUT, op="wait /dev/vfio/N",
                                       path=f"/dev/vfio/{dev.iommu_group}",
                                       hint="the group node did not appear: is devtmpfs mounted and vfio loaded?")
            res.steps[-1].done = True
            res.vfio_node = f"/dev/vfio/{dev.iommu_group}"
    except BaseException:
        for d in reversed(moved):  # give back what we moved, best effort
            try:
                _restore(core, memory, d.bdf, timeout=min(timeout, 2.0))
            except Exception:
                pass
        raise
    for c in res.changes:
        c.after = core.driver_of(c.bdf)
    return res


def _restore(core: DriverCore, memory: DriverMemory, bdf: str, *, timeout: float,
             steps: list[Step] | None = None, probe: bool = True) -> str | None:
    """Unbind ``bdf``, clear its override and reprobe so its original driver takes it back."""
    steps = steps if steps is not None else []
    saved = memory.recall(bdf) or {}
    original = saved.get("driver") if saved else None
    cur = core.driver_of(bdf)
    if cur is not None:
        steps.append(Step(bdf, "unbind", f"{cur}: write {bdf} to driver/unbind", True))
        core.unbind(bdf)
    prev_override = saved.get("driver_override") if saved else None
    core.set_override(bdf, prev_override if isinstance(prev_override, str) else None)
    steps.append(Step(bdf, "clear-override", f"write {prev_override or 'newline'} to driver_override", True))
    if probe and (original is not None or not saved):
        core.probe(bdf)
        steps.append(Step(bdf, "probe", f"write {bdf} to bus/pci/drivers_probe", True))
        if isinstance(original, str):
            _wait(lambda: core.driver_of(bdf) == original, timeout)
    memory.forget(bdf)
    return core.driver_of(bdf)


def _put_back(core: DriverCore, dev: PciDevice, *, timeout: float) -> None:
    """Best effort after a failed unbind step: give ``dev`` its driver and driver_override of
    before the unbind again, so a failed unbind leaves the device as it found it (the remembered
    original driver stays recorded, so the unbind can simply be retried)."""
    try:
        cur = core.driver_of(dev.bdf)
        if cur == dev.driver:
            core.set_override(dev.bdf, dev.driver_override)
            return
        if cur is not None:
            core.unbind(dev.bdf)
        core.set_override(dev.bdf, dev.driver_override)
        if dev.driver is not None:
            core.probe(dev.bdf)
            _wait(lambda: core.driver_of(dev.bdf) == dev.driver, timeout)
    except Exception:
        pass


def unbind(
    source: DeviceSource,
    bdf: str,
    *,
    paths: HostPaths,
    core: DriverCore | None = None,
    whole_group: bool = False,
    force: bool = False,
    dry_run: bool = False,
    restore: bool = True,
    timeout: float = 5.0,
) -> BindResult:
    """Take ``bdf`` (or its group's VFIO members) off its driver and give it back to the original.

    The original driver is the one :func:`bind` remembered; without a record, the driver core
    picks (drivers_probe with the override cleared). With ``restore=False`` the device is left
    unbound. Refuses while another process holds /dev/vfio/N open (the kernel would block the
    unbind until it is closed) unless ``force``.

    Returns a :class:`BindResult` whose ``changes`` show each device's driver before and after.
    If a step fails, the device being worked on is given back its driver and driver_override
    of before (best effort) and the error propagates; the original driver stays remembered, so
    the unbind can be retried. Devices of the group already given back stay given back.
    """
    core = core or DriverCore(paths)
    dev = source.device(bdf)
    targets = _targets(source, dev, whole_group, False)
    res = BindResult("unbind", dev.bdf, dev.iommu_group, dry_run)
    memory = DriverMemory(paths)
    for d in targets:
        if is_vfio_driver(d.driver):
            holders, _ = vfio_holders(paths, vfio_nodes(d))
            res.uses += [Use("vfio-fd", d.bdf, f"pid {h.pid} ({h.comm}) holds {h.path} open") for h in holders]
        else:
            res.uses += find_uses(paths, d)
    if res.uses and not force and not dry_run:
        raise DeviceInUseError(dev.bdf, res.uses)
    for d in targets:
        saved = memory.recall(d.bdf)
        want = saved.get("driver") if saved else "(kernel's choice)"
        res.changes.append(DeviceChange(d.bdf, d.ids, d.driver, target=want if restore else None))  # type: ignore[arg-type]
        if dry_run:
            if d.driver:
                res.steps.append(Step(d.bdf, "unbind", f"{d.driver}: write {d.bdf} to driver/unbind"))
            res.steps.append(Step(d.bdf, "clear-override", "restore driver_override"))
            if restore:
                res.steps.append(Step(d.bdf, "probe", f"write {d.bdf} to bus/pci/drivers_probe"))
            res.changes[-1].after = d.driver
            continue
        try:
            res.changes[-1].after = _restore(core, memory, d.bdf, timeout=timeout, steps=res.steps,
                                             probe=restore)
        except BaseException:
            _put_back(core, d, timeout=min(timeout, 2.0))
            raise
        if restore and saved and saved.get("driver") and res.changes[-1].after != saved.get("driver"):
            res.warnings.append(f"{d.bdf}: {saved.get('driver')} did not take it back "
                                f"(driver now {res.changes[-1].after}); see dmesg")
    return res


__all__ = [
    "bind", "unbind", "find_uses", "vfio_holders", "vfio_nodes", "DriverCore", "DriverMemory",
    "BindResult", "DeviceChange", "Step", "Use", "Holder", "DeviceInUseError",
    "GroupNotViableError", "BindTimeoutError", "VFIO_PCI",
]
