"""Host facts: the machine a backend talks to, in one facade (``backend.host``).

A :class:`Host` says where the machine's sysfs, procfs and device nodes are, performs the
driver core's writes (``driver/unbind``, ``driver_override``, ``drivers_probe``) with the
kernel's errors (OSError), reads /proc through :mod:`pyvfio.util.proc`, and tells how to read the
kernel log and whether interrupts are remapped when the machine knows better than its files.

* the real machine: :meth:`Host.real` (``/sys``, ``/proc``, ``/dev``; the kernel reacts to writes);
* a fake tree (tests, ``pyvfio --root``): :meth:`Host.at` over a tree written by
  :class:`pyvfio.mockkernel.host.FakeHost`, whose driver core gives the kernel's reaction;
* the mock kernel's machine: ``MockBackend().host`` (:class:`MockHost`): the mock's own tree,
  its dmesg, its IOMMU groups' interrupt remapping, and a /proc/self that shows the mock task's
  RLIMIT_MEMLOCK and locked memory, so everything the doctor reads describes one machine.

Upper layers ask the facade and never which backend is in use.
"""

from __future__ import annotations

import os
from typing import Callable

from ..mockkernel import vfio as mock_vfio
from ..mockkernel.core import MockKernel
from ..mockkernel.host import FakeHost, HostRoots, limits_text
from ..util import proc as _proc
from ..util.sysfs import pci_dev_path, pci_driver_of


class Host:
    """The real machine's /sys, /proc and /dev (or any tree the kernel itself maintains)."""

    #: ``dmesg() -> lines`` when the machine keeps its own kernel log (None: read ``dev/kmsg``).
    dmesg: Callable[[], list[str]] | None = None
    #: ``interrupt_remapping() -> bool`` when the machine knows it (None: read /proc/interrupts).
    interrupt_remapping: Callable[[], bool] | None = None

    def __init__(self, sys: str = "/sys", proc: str = "/proc", dev: str = "/dev",
                 state: str = "/run/pyvfio") -> None:
        self.sys = sys
        self.proc = proc
        self.dev = dev
        #: Where pyvfio remembers original drivers (survives between CLI runs, not reboots).
        self.state = state

    @classmethod
    def real(cls) -> "Host":
        return cls()

    @staticmethod
    def at(sys: str, proc: str = "/proc", dev: str = "/dev", state: str = "/run/pyvfio") -> "Host":
        """The host whose sysfs is ``sys``: the real one for /sys, else a fake tree whose driver
        core reacts like the kernel's (:class:`TreeHost`)."""
        if os.path.realpath(sys) == "/sys":
            return Host(sys, proc, dev, state)
        return TreeHost(FakeHost.attach(HostRoots(sys, proc, dev, state)))

    @staticmethod
    def under(root: str) -> "Host":
        """The fake host at ``root`` (``root/sys``, ``root/proc``, ``root/dev``, ``root/run/pyvfio``)."""
        j = os.path.join
        return Host.at(j(root, "sys"), j(root, "proc"), j(root, "dev"), j(root, "run", "pyvfio"))

    @property
    def sysfs_root(self) -> str:
        return self.sys

    @property
    def is_live(self) -> bool:
        """True when ``proc`` is this process's own /proc (so pids, netns and ioctls match)."""
        return os.path.realpath(self.proc) == "/proc"

    # -- the driver core: each write is one step of a bind (OSError when the kernel refuses) -----
    def dev_path(self, bdf: str, *rest: str) -> str:
        return pci_dev_path(self.sys, bdf, *rest)

    def driver_path(self, bdf: str) -> str:
        return self.dev_path(bdf, "driver", "unbind")

    def override_path(self, bdf: str) -> str:
        return self.dev_path(bdf, "driver_override")

    def probe_path(self) -> str:
        return os.path.join(self.sys, "bus", "pci", "drivers_probe")

    def write(self, path: str, value: str) -> None:
        """A sysfs write (the kernel reacts: driver/unbind, driver_override, drivers_probe...)."""
        with open(path, "w") as f:
            f.write(value)

    def driver_of(self, bdf: str) -> str | None:
        return pci_driver_of(self.sys, bdf)

    def unbind(self, bdf: str) -> None:
        """``BDF/driver/unbind``; no-op when unbound."""
        if self.driver_of(bdf) is not None:
            self.write(self.driver_path(bdf), bdf)

    def set_override(self, bdf: str, driver: str | None) -> None:
        """``BDF/driver_override`` (a newline clears it)."""
        self.write(self.override_path(bdf), driver or "\n")

    def probe(self, bdf: str) -> None:
        """``bus/pci/drivers_probe``: ask the driver core to find a driver for ``bdf``."""
        self.write(self.probe_path(), bdf)

    def node_exists(self, group: int) -> bool:
        return os.path.exists(os.path.join(self.dev, "vfio", str(group)))

    # -- /proc ----------------------------------------------------------------------------------
    def status(self, pid: int | str = "self") -> dict[str, str]:
        """Parsed ``/proc/PID/status`` of this host (empty when unreadable)."""
        return _proc.read_status(pid, self.proc)

    def locked_bytes(self, pid: int | str = "self") -> int:
        """VmLck of ``pid`` in bytes (0 when unknown)."""
        return _proc.vm_bytes("VmLck", pid, self.proc)

    # -- user memory -----------------------------------------------------------------------------
    def vm_areas(self, addr: int, size: int, *, smaps: bool = False) -> list[_proc.VmArea]:
        """The VMAs of this process overlapping ``[addr, addr+size)`` (``/proc/self/maps``, or
        ``smaps`` with the per-area page-size and huge-page fields).

        Always the live ``/proc/self``, also on a fake host: user memory is this process's memory
        under every backend (the mock kernel pins and DMAs into the process's own pages), so it is
        what the kernel, real or modelled, sees."""
        return _proc.read_vm_areas(addr, size, smaps=smaps)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sys={self.sys} proc={self.proc} dev={self.dev}>"


class TreeHost(Host):
    """A fake tree (:class:`~pyvfio.mockkernel.host.FakeHost`): writes get the kernel's reaction."""

    def __init__(self, tree: FakeHost) -> None:
        p = tree.paths
        super().__init__(p.sys, p.proc, p.dev, p.state)
        self.tree = tree

    def driver_of(self, bdf: str) -> str | None:
        return self.tree.driver_of(bdf)

    def write(self, path: str, value: str) -> None:
        """A sysfs write with the driver core's reaction for the driver-core files."""
        if path == self.probe_path():
            self.tree.probe(value.strip())
        elif os.path.basename(path) == "driver_override":
            self.tree.set_override(os.path.basename(os.path.dirname(path)), value.strip() or None)
        elif path.endswith(os.path.join("driver", "unbind")):
            self.tree.unbind(os.path.basename(os.path.dirname(os.path.dirname(path))))
        else:
            super().write(path, value)

    def unbind(self, bdf: str) -> None:
        self.tree.unbind(bdf)

    def set_override(self, bdf: str, driver: str | None) -> None:
        self.tree.set_override(bdf, driver)

    def probe(self, bdf: str) -> None:
        self.tree.probe(bdf)

    def node_exists(self, group: int) -> bool:
        return self.tree.node_exists(group)


class MockHost(TreeHost):
    """The mock kernel's machine: its tree, its dmesg, its groups' interrupt remapping, and a
    /proc/self showing the mock task (RLIMIT_MEMLOCK, CAP_IPC_LOCK, VmLck with what it pinned)."""

    def __init__(self, kernel: MockKernel) -> None:
        super().__init__(kernel.host)
        self.kernel = kernel
        self.dmesg = lambda: list(kernel.dmesg)
        if mock_vfio.NAME in kernel.state:
            self.interrupt_remapping = lambda: mock_vfio.interrupt_remapping(kernel)
        self.refresh()

    def refresh(self) -> None:
        """Write the mock task's view into the tree's /proc/self (limits, status)."""
        st = self.kernel.state.get(mock_vfio.NAME)
        if st is None:
            return
        task = st.task
        limit = task.rlimit_memlock()
        cap = _proc.cap_eff()
        if task.cap_ipc_lock_override is not None:
            bit = 1 << _proc.CAP_IPC_LOCK
            cap = (cap | bit) if task.cap_ipc_lock_override else (cap & ~bit)
        self.tree.write("proc/self/limits", limits_text(None if limit >= (1 << 64) - 1 else limit))
        self.tree.write("proc/self/status", f"Name:\tpyvfio\nVmLck:\t{task.locked_vm() // 1024:8d} kB\n"
                                            f"CapEff:\t{cap:016x}\n")


__all__ = ["Host", "TreeHost", "MockHost"]
