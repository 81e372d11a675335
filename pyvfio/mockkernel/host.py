"""The mock's host: a /sys + /proc + /dev tree, and a driver core that reacts to sysfs writes the
way the kernel does. It is the only code that writes a fake sysfs tree (the mock kernel's, and the
hand-made fixtures of the tests).

:class:`FakeHost` writes the files the real kernel exposes, in the real layout (devices under
``sys/devices/pci0000:00/``, ``bus/pci/devices/BDF`` and ``class/*`` as links), so discovery and
the doctor read it exactly as they read /sys and /proc.

Its driver core (:meth:`FakeHost.unbind`, :meth:`FakeHost.set_override`, :meth:`FakeHost.probe`)
applies the kernel's rules: ``driver/unbind`` removes the driver link; ``drivers_probe`` binds the
override driver if set, otherwise the first driver whose ``ids`` file (a fixture-only file: one
``vvvv:dddd`` per line) lists the device; a vfio driver without an IOMMU group fails with EINVAL
like vfio-pci's probe; binding a vfio driver creates ``dev/vfio/N``. A mock kernel that owns the
host hooks into each rebind (:attr:`FakeHost.rebind_hooks`) to apply its own rules (EBUSY while
the device is in use through VFIO) and to follow the new driver. Errors are OSErrors with the
errno the kernel's sysfs write returns.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from ..util.bdf import is_vfio_driver
from ..util.sysfs import pci_dev_path, pci_driver_of


@dataclass(frozen=True)
class HostRoots:
    """Where a fake host's ``sys``, ``proc``, ``dev`` and pyvfio's state directory are."""

    sys: str
    proc: str
    dev: str
    state: str

    @property
    def is_live(self) -> bool:
        """True when ``proc`` is this process's own /proc."""
        return os.path.realpath(self.proc) == "/proc"


#: A rebind hook: ``hook(bdf, driver)`` before the driver of ``bdf`` changes (None: unbound);
#: raise OSError to refuse.
RebindHook = Callable[[str, "str | None"], None]


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _link(target: str, link: str) -> None:
    """Create ``link`` -> ``target`` as a relative symlink (replacing what was there)."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


class FakeHost:
    """Builds a fake host under ``root``; every method returns self for chaining."""

    def __init__(self, root: str) -> None:
        self.root = root
        j = os.path.join
        self.paths = HostRoots(j(root, "sys"), j(root, "proc"), j(root, "dev"), j(root, "run", "pyvfio"))
        #: Called before a device's driver changes (see :data:`RebindHook`).
        self.rebind_hooks: list[RebindHook] = []
        for d in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/kernel/iommu_groups",
                  "sys/class/iommu", "sys/class/block", "sys/class/net", "proc/self", "proc/net",
                  "dev/vfio"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        _write(os.path.join(root, "sys/bus/pci/drivers_probe"), "")
        for name, text in {
            "proc/cmdline": "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet\n",
            "proc/self/limits": _limits(8 * 1024 * 1024),
            "proc/self/status": "Name:\tpyvfio\nVmLck:\t       0 kB\nCapEff:\t0000000000000000\n",
            "proc/self/mountinfo": "",
            "proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
            "proc/net/route": "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
            "proc/net/if_inet6": "",
            "proc/net/ipv6_route": "",
            "proc/interrupts": "",
            "proc/iomem": "",
            "proc/meminfo": "MemTotal:        4000000 kB\nHugePages_Total:       0\nHugePages_Free:        0\n"
                            "Hugepagesize:       2048 kB\nCmaTotal:              0 kB\nCmaFree:               0 kB\n",
            "proc/zoneinfo": "",
            "dev/kmsg": "",
        }.items():
            p = os.path.join(root, name)
            if not os.path.exists(p):
                _write(p, text)

    @classmethod
    def attach(cls, paths: HostRoots) -> "FakeHost":
        """The driver core and writers over an existing tree at ``paths`` (nothing is created)."""
        self = cls.__new__(cls)
        self.root = os.path.commonpath([paths.sys, paths.proc, paths.dev])
        self.paths = paths
        self.rebind_hooks = []
        return self

    # -- PCI --------------------------------------------------------------------------------
    def dev_dir(self, bdf: str) -> str:
        return os.path.join(self.root, "sys", "devices", "pci" + bdf[:7], bdf)

    def add_driver(self, name: str, ids: Iterable[str] = ()) -> "FakeHost":
        """A loaded driver; ``ids`` (``vvvv:dddd``) are the devices its probe accepts."""
        d = os.path.join(self.root, "sys/bus/pci/drivers", name)
        os.makedirs(d, exist_ok=True)
        for f in ("bind", "unbind", "new_id"):
            p = os.path.join(d, f)
            if not os.path.exists(p):
                _write(p, "")
        existing = set((_read(os.path.join(d, "ids")) or "").split())
        _write(os.path.join(d, "ids"), "".join(f"{i}\n" for i in sorted(existing | set(ids))))
        return self

    def add_pci(
        self,
        bdf: str,
        vendor: int,
        device: int,
        *,
        class_code: int = 0xFF0000,
        driver: str | None = None,
        group: int | None = None,
        numa_node: int = -1,
        reset_method: str | None = "flr bus",
        revision: int = 0x10,
        sriov_totalvfs: int | None = None,
        physfn: str | None = None,
        subsystem_vendor: int | None = None,
        subsystem_device: int = 0x1100,
        reserved: Iterable[tuple[int, int]] = (),
    ) -> "FakeHost":
        """A PCI function; ``reserved`` are its group's reserved IOVA windows (start, end inclusive)."""
        d = self.dev_dir(bdf)
        sv = vendor if subsystem_vendor is None else subsystem_vendor
        attrs = {
            "vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}", "class": f"0x{class_code:06x}",
            "subsystem_vendor": f"0x{sv:04x}", "subsystem_device": f"0x{subsystem_device:04x}",
            "revision": f"0x{revision:02x}", "numa_node": str(numa_node), "driver_override": "(null)\n",
            "modalias": f"pci:v{vendor:08X}d{device:08X}sv*sd*bc{class_code >> 16:02X}sc*i*",
        }
        if reset_method is not None:
            attrs["reset_method"] = reset_method
            if reset_method:
                attrs["reset"] = ""
        if sriov_totalvfs is not None:
            attrs["sriov_totalvfs"] = str(sriov_totalvfs)
            attrs["sriov_numvfs"] = "0"
        for k, v in attrs.items():
            _write(os.path.join(d, k), v if v.endswith("\n") or not v else v + "\n")
        _link(d, os.path.join(self.root, "sys/bus/pci/devices", bdf))
        if group is not None:
            self.set_group(bdf, group, reserved)
        if driver:
            self.add_driver(driver, [] if is_vfio_driver(driver) else [f"{vendor:04x}:{device:04x}"])
            self._bind(bdf, driver)
        if physfn:
            pf = self.dev_dir(physfn)
            _link(pf, os.path.join(d, "physfn"))
            n = len([x for x in os.listdir(pf) if x.startswith("virtfn")])
            _link(d, os.path.join(pf, f"virtfn{n}"))
            _write(os.path.join(pf, "sriov_numvfs"), f"{n + 1}\n")
        return self

    def set_group(self, bdf: str, group: int, reserved: Iterable[tuple[int, int]] = ()) -> "FakeHost":
        g = os.path.join(self.root, "sys/kernel/iommu_groups", str(group))
        os.makedirs(os.path.join(g, "devices"), exist_ok=True)
        _write(os.path.join(g, "type"), "DMA\n")
        windows = list(reserved)
        if windows:
            _write(os.path.join(g, "reserved_regions"),
                   "\n".join(f"{lo:#018x} {hi:#018x} msi" for lo, hi in windows) + "\n")
        _link(g, os.path.join(self.dev_dir(bdf), "iommu_group"))
        _link(self.dev_dir(bdf), os.path.join(g, "devices", bdf))
        return self

    def _bind(self, bdf: str, driver: str) -> None:
        drv = os.path.join(self.paths.sys, "bus", "pci", "drivers", driver)
        dev = os.path.realpath(self.dev_path(bdf))
        _link(drv, os.path.join(dev, "driver"))
        _link(dev, os.path.join(drv, bdf))
        if is_vfio_driver(driver):
            group = _group_of(dev)
            if group is not None:
                _write(os.path.join(self.paths.dev, "vfio", str(group)), "")

    # -- the driver core (what writes to driver/unbind, driver_override, drivers_probe do) ----------
    def dev_path(self, bdf: str, *rest: str) -> str:
        return pci_dev_path(self.paths.sys, bdf, *rest)

    def driver_of(self, bdf: str) -> str | None:
        return pci_driver_of(self.paths.sys, bdf)

    def node_exists(self, group: int) -> bool:
        """``dev/vfio/N`` exists (a device of group N is bound to a vfio driver)."""
        return os.path.exists(os.path.join(self.paths.dev, "vfio", str(group)))

    def _drv_dir(self, name: str) -> str:
        return os.path.join(self.paths.sys, "bus", "pci", "drivers", name)

    def _real_dev_dir(self, bdf: str) -> str:
        return os.path.realpath(self.dev_path(bdf))

    def _hooks(self, bdf: str, driver: str | None) -> None:
        for hook in self.rebind_hooks:
            hook(bdf, driver)

    def _attach(self, bdf: str, driver: str) -> None:
        dev = self._real_dev_dir(bdf)
        if is_vfio_driver(driver):
            group = _group_of(dev)
            if group is None:  # vfio_pci_core_register_device: no iommu group -> -EINVAL
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL),
                              os.path.join(self.paths.sys, "bus", "pci", "drivers_probe"))
        self._hooks(bdf, driver)
        os.makedirs(self._drv_dir(driver), exist_ok=True)
        self._bind(bdf, driver)

    def _detach(self, bdf: str, drv: str) -> None:
        self._hooks(bdf, None)
        dev = self._real_dev_dir(bdf)
        for p in (os.path.join(dev, "driver"), os.path.join(self._drv_dir(drv), bdf)):
            if os.path.lexists(p):
                os.unlink(p)
        if is_vfio_driver(drv):
            group = _group_of(dev)
            gdir = os.path.join(self.paths.sys, "kernel", "iommu_groups", str(group), "devices")
            still = [m for m in (os.listdir(gdir) if os.path.isdir(gdir) else [])
                     if m != bdf and is_vfio_driver(self.driver_of(m))]
            node = os.path.join(self.paths.dev, "vfio", str(group))
            if not still and os.path.exists(node):
                os.unlink(node)

    def unbind(self, bdf: str) -> None:
        """``echo BDF > BDF/driver/unbind``; no-op when unbound. OSError when refused."""
        drv = self.driver_of(bdf)
        if drv is None:
            return
        _write(self.dev_path(bdf, "driver", "unbind"), bdf)
        self._detach(bdf, drv)

    def set_override(self, bdf: str, driver: str | None) -> None:
        """``echo DRIVER > BDF/driver_override`` (a newline clears it)."""
        _write(self.dev_path(bdf, "driver_override"), driver or "\n")

    def probe(self, bdf: str) -> None:
        """``echo BDF > bus/pci/drivers_probe``: the override driver, else the first whose ids match."""
        _write(os.path.join(self.paths.sys, "bus", "pci", "drivers_probe"), bdf)
        if self.driver_of(bdf) is not None:
            return
        dev = self._real_dev_dir(bdf)
        override = (_read(os.path.join(dev, "driver_override")) or "").strip()
        if override and override != "(null)":
            if os.path.isdir(self._drv_dir(override)):
                self._attach(bdf, override)
            return  # override set: no other driver may take it
        ids = f"{int(_read(os.path.join(dev, 'vendor')) or '0', 16):04x}:" \
              f"{int(_read(os.path.join(dev, 'device')) or '0', 16):04x}"
        drivers = os.path.join(self.paths.sys, "bus", "pci", "drivers")
        for name in sorted(os.listdir(drivers)):
            if ids in (_read(os.path.join(drivers, name, "ids")) or "").split():
                self._attach(bdf, name)
                return

    def rebind(self, bdf: str, driver: str | None) -> None:
        """Move ``bdf`` to ``driver`` at once (None: unbound), as unbind + a forced probe do."""
        cur = self.driver_of(bdf)
        if cur == driver:
            self._hooks(bdf, driver)
            return
        if cur is not None:
            self._detach(bdf, cur)
        if driver:
            self._attach(bdf, driver)

    # -- module parameters --------------------------------------------------------------------
    def param_path(self, module: str, name: str) -> str:
        return os.path.join(self.paths.sys, "module", module, "parameters", name)

    def param(self, module: str, name: str, default: str) -> str:
        text = _read(self.param_path(module, name))
        return default if text is None else text.strip()

    def set_param(self, module: str, name: str, value: str) -> "FakeHost":
        _write(self.param_path(module, name), f"{value}\n")
        return self

    def add_module(self, name: str) -> "FakeHost":
        os.makedirs(os.path.join(self.paths.sys, "module", name), exist_ok=True)
        return self

    def add_vfio_cdev(self, bdf: str, n: int) -> "FakeHost":
        """The device's VFIO cdev ``vfio-dev/vfioN`` (char 511:N), what vfio_device_add creates."""
        _write(os.path.join(self.dev_path(bdf), "vfio-dev", f"vfio{n}", "dev"), f"511:{n}\n")
        return self

    # -- children: block devices, network interfaces --------------------------------------------
    def add_block(self, bdf: str, name: str, devno: str, partitions: dict[str, str] | None = None) -> "FakeHost":
        """A disk ``name`` (``devno`` = "major:minor") below ``bdf``, with optional partitions."""
        disk = os.path.join(self.dev_dir(bdf), "host0", "block", name)
        _write(os.path.join(disk, "dev"), devno + "\n")
        os.makedirs(os.path.join(disk, "holders"), exist_ok=True)
        _link(disk, os.path.join(self.root, "sys/class/block", name))
        for part, pdevno in (partitions or {}).items():
            pdir = os.path.join(disk, part)
            _write(os.path.join(pdir, "dev"), pdevno + "\n")
            _write(os.path.join(pdir, "partition"), "1\n")
            os.makedirs(os.path.join(pdir, "holders"), exist_ok=True)
            _link(pdir, os.path.join(self.root, "sys/class/block", part))
        return self

    def add_net(self, bdf: str, ifname: str) -> "FakeHost":
        d = os.path.join(self.dev_dir(bdf), "net", ifname)
        _write(os.path.join(d, "operstate"), "up\n")
        _link(d, os.path.join(self.root, "sys/class/net", ifname))
        return self

    def mount(self, devno: str, source: str, target: str) -> "FakeHost":
        self.append("proc/self/mountinfo",
                    f"30 1 {devno} / {target} rw,relatime shared:1 - ext4 {source} rw\n")
        return self

    def swapon(self, source: str) -> "FakeHost":
        return self.append("proc/swaps", f"{source}\t\t\t\tpartition\t1048572\t\t0\t\t-2\n")

    def add_ipv4_route(self, ifname: str, dest: str, prefix: int) -> "FakeHost":
        d = struct.unpack("<I", socket.inet_aton(dest))[0]
        m = struct.unpack("<I", struct.pack(">I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))[0]
        return self.append("proc/net/route", f"{ifname}\t{d:08X}\t00000000\t0001\t0\t0\t0\t{m:08X}\t0\t0\t0\n")

    def add_ipv6_address(self, ifname: str, addr_hex: str, prefix: int, scope: int = 0) -> "FakeHost":
        return self.append("proc/net/if_inet6", f"{addr_hex} 02 {prefix:02x} {scope:02x} 80 {ifname}\n")

    def hold_open(self, pid: int, comm: str, path: str, fd: int = 7) -> "FakeHost":
        """Process ``pid`` holds ``path`` open (a proc/PID/fd/N link)."""
        _write(os.path.join(self.root, "proc", str(pid), "comm"), comm + "\n")
        link = os.path.join(self.root, "proc", str(pid), "fd", str(fd))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(path, link)
        return self

    # -- everything else ----------------------------------------------------------------------
    def write(self, rel: str, text: str) -> "FakeHost":
        _write(os.path.join(self.root, rel), text)
        return self

    def append(self, rel: str, text: str) -> "FakeHost":
        p = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "a") as f:
            f.write(text)
        return self

    def remove(self, rel: str) -> "FakeHost":
        p = os.path.join(self.root, rel)
        if os.path.lexists(p):
            os.unlink(p)
        return self


def _limits(memlock: int | None) -> str:
    v = "unlimited" if memlock is None else str(memlock)
    return ("Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max open files            1024                 1048576              files     \n"
            f"Max locked memory         {v:<20} {v:<20} bytes     \n")


def limits_text(memlock: int | None) -> str:
    """A /proc/PID/limits text with the given RLIMIT_MEMLOCK (None = unlimited)."""
    return _limits(memlock)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _group_of(dev_dir: str) -> int | None:
    try:
        return int(os.path.basename(os.readlink(os.path.join(dev_dir, "iommu_group"))))
    except (OSError, ValueError):
        g = (_read(os.path.join(dev_dir, "iommu_group")) or "").strip()
        return int(g) if g.isdigit() else None


def sample_host(root: str) -> FakeHost:
    """A small passthrough host with one example of each situation the CLI and doctor handle.

    ====================  ==========  ===============  =====  ===========================================
    BDF                   ids         driver           group  notes
    ====================  ==========  ===============  =====  ===========================================
    0000:00:00.0          8086:29c0   -                0      host bridge
    0000:00:02.0          8086:10d3   e1000e           1      eth0 with a route (in use)
    0000:00:03.0          1234:11e8   vfio-pci         2      edu, no reset method
    0000:00:04.0          1b36:0010   nvme             3      nvme0n1p1 mounted on /data (in use)
    0000:01:00.0          10de:1b80   nouveau          4      GPU ...
    0000:01:00.1          10de:10f0   snd_hda_intel    4      ... and its audio function
    0000:02:00.0          8086:1521   igb              5      SR-IOV PF (7 VFs possible), NUMA node 1
    0000:02:10.0          8086:1520   -                6      its VF
    0000:03:00.0          1af4:1041   virtio-pci       -      no IOMMU group
    ====================  ==========  ===============  =====  ===========================================

    Intel IOMMU on (ACPI DMAR, dmar0, intel_iommu=on), interrupt remapping (IR-PCI-MSI),
    vfio modules loaded, /dev/vfio/vfio and /dev/kvm present, 4 GiB of 2 MiB hugepages free.
    """
    h = FakeHost(root)
    h.add_driver("vfio-pci").add_driver("pci-stub")
    h.add_pci("0000:00:00.0", 0x8086, 0x29C0, class_code=0x060000, group=0, reset_method="")
    h.add_pci("0000:00:02.0", 0x8086, 0x10D3, class_code=0x020000, driver="e1000e", group=1)
    h.add_pci("0000:00:03.0", 0x1234, 0x11E8, class_code=0x00FF00, driver="vfio-pci", group=2, reset_method="")
    h.add_pci("0000:00:04.0", 0x1B36, 0x0010, class_code=0x010802, driver="nvme", group=3)
    h.add_pci("0000:01:00.0", 0x10DE, 0x1B80, class_code=0x030000, driver="nouveau", group=4)
    h.add_pci("0000:01:00.1", 0x10DE, 0x10F0, class_code=0x040300, driver="snd_hda_intel", group=4)
    h.add_pci("0000:02:00.0", 0x8086, 0x1521, class_code=0x020000, driver="igb", group=5, numa_node=1,
              sriov_totalvfs=7)
    h.add_pci("0000:02:10.0", 0x8086, 0x1520, class_code=0x020000, group=6, numa_node=1, physfn="0000:02:00.0")
    h.add_pci("0000:03:00.0", 0x1AF4, 0x1041, class_code=0x020000, driver="virtio-pci")
    h.add_net("0000:00:02.0", "eth0").add_ipv4_route("eth0", "10.0.2.0", 24)
    h.add_block("0000:00:04.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}).mount("259:1", "/dev/nvme0n1p1", "/data")
    h.write("sys/firmware/acpi/tables/DMAR", "")
    os.makedirs(os.path.join(root, "sys/class/iommu/dmar0/intel-iommu"), exist_ok=True)
    h.write("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro intel_iommu=on\n")
    h.write("proc/interrupts", "            CPU0\n  0:   30   IR-IO-APIC    2-edge      timer\n"
                               " 24:    0   IR-PCI-MSI-0000:00:02.0 0-edge   eth0\n")
    for mod in ("vfio", "vfio_pci", "vfio_iommu_type1"):
        os.makedirs(os.path.join(root, "sys/module", mod), exist_ok=True)
    h.write("sys/module/vfio_iommu_type1/parameters/dma_entry_limit", "65535\n")
    h.write("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "N\n")
    h.write("sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "N\n")
    h.write("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "2048\n")
    h.write("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "2048\n")
    h.write("proc/self/limits", limits_text(None))
    h.write("proc/zoneinfo", "Node 0, zone      DMA\n  pages free     3840\n        present  3998\n"
                             "Node 0, zone   Normal\n  pages free     100000\n        present  1000000\n")
    h.write("dev/vfio/vfio", "").write("dev/kvm", "")
    h.write("dev/kmsg", "6,1,100,-;DMAR: IOMMU enabled\n6,2,200,-;DMAR-IR: Enabled IRQ remapping in x2apic mode\n")
    return h


__all__ = ["FakeHost", "HostRoots", "RebindHook", "is_vfio_driver", "limits_text", "sample_host"]
