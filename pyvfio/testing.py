"""Test helpers: a mock machine with devices, built through one topology API.

Nothing in the library imports this module; tests, examples and tools do::

    >>> from pyvfio.seam import MockBackend
    >>> from pyvfio.testing import machine
    >>> be = MockBackend()                      # the default machine: edu in group 3, a NIC in 2
    >>> m = machine(be).add_edu("0000:00:04.0", group=4)
    >>> m.group(4).viable, m.device("0000:00:04.0").vendor_id == 0x1234
    (True, True)
    >>> m.shutdown()

* :func:`machine`: the topology of a mock backend (add simulated devices, rebind them, look at
  groups, the task, dmesg, the files behind fds, the IOMMU behind a container);
* :func:`power_backend`: a mock shaped like the POWER9 pseries test guest (sPAPR TCE only);
* :func:`standalone_device`: a VFIO device on a bare mock kernel, without IOMMU;
* :class:`FaultyBackend`: a backend proxy that logs every seam call and fails chosen ones
  (the Nth call of an op, once or from then on) with chosen errnos: fault injection;
* :class:`FakeHost`, :func:`sample_host`, :func:`limits_text`: hand-made host trees for
  discovery, binding and doctor tests.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .mockkernel import MockFile, MockKernel
from .mockkernel import iommufd as _iommufd
from .mockkernel import kvm as _kvm
from .mockkernel import vfio as _vfio
from .mockkernel.host import FakeHost, limits_text, sample_host
from .mockkernel.pci import DEVICE_KINDS, E1000e, Edu, SimPciDevice, open_device_file
from .mockkernel.pci import dmalog as _dmalog
from .mockkernel.task import MockTask
from .mockkernel.vfio import dirty as _dirty
from .mockkernel.vfio.spapr import POWER_EDU_BDF, POWER_EDU_GROUP, power_kernel
from .errors import error_from_errno
from .seam.base import O_RDWR_CLOEXEC, request_name
from .seam.mock import MockBackend
from .vfio.device import Device


class Machine:
    """The topology of one mock kernel (``backend.kernel``); adders return ``self`` for chaining."""

    def __init__(self, backend: MockBackend) -> None:
        self.backend = backend
        self.kernel: MockKernel = backend.kernel

    # -- building ---------------------------------------------------------------------------------
    def add(self, kind: str, bdf: str, *, group: int, driver: str | None,
            reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """Plug a simulated device of ``kind`` ("edu", "e1000e") at ``bdf`` into IOMMU ``group``."""
        sim = DEVICE_KINDS[kind](self.kernel, bdf, **kw)
        _vfio.add_device(self.kernel, sim, group=group, driver=driver, reserved=reserved)
        return self

    def add_edu(self, bdf: str = "0000:00:03.0", *, group: int, driver: str | None = "vfio-pci",
                reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """QEMU's edu at ``bdf``; ``kw`` as :class:`~pyvfio.mockkernel.pci.Edu` takes them."""
        return self.add("edu", bdf, group=group, driver=driver, reserved=reserved, **kw)

    def add_e1000e(self, bdf: str = "0000:00:02.0", *, group: int, driver: str | None = "e1000e",
                   reserved: list[tuple[int, int]] | None = None, **kw: Any) -> "Machine":
        """An e1000e-like NIC at ``bdf`` (on its host driver by default)."""
        return self.add("e1000e", bdf, group=group, driver=driver, reserved=reserved, **kw)

    def bind(self, bdf: str, driver: str | None) -> "Machine":
        """Move ``bdf`` to ``driver`` (None: unbound), as the driver core would; EBUSY in use."""
        _vfio.bind_driver(self.kernel, bdf, driver)
        return self

    def sync_cdevs(self) -> dict[str, int]:
        """Give the vfio-pci devices added since the kernel started their iommufd cdevs."""
        return _iommufd.sync_cdevs(self.kernel)

    def shutdown(self) -> None:
        """Power the machine off (closes the simulated devices' BAR memfds)."""
        _vfio.shutdown(self.kernel)

    # -- looking --------------------------------------------------------------------------------
    def device(self, bdf: str) -> Any:
        """The simulated device at ``bdf``."""
        return _vfio.state(self.kernel).devices[bdf].sim

    def entry(self, bdf: str) -> _vfio.DeviceEntry:
        """The topology entry of ``bdf`` (its driver, its group)."""
        return _vfio.state(self.kernel).devices[bdf]

    def group(self, number: int) -> _vfio.MockIommuGroup:
        """IOMMU group ``number`` (its devices, reserved windows, interrupt remapping, VFIO file)."""
        return _vfio.state(self.kernel).groups[number]

    @property
    def task(self) -> MockTask:
        """The calling task as the mock accounts it (pinned bytes, limit overrides)."""
        return _vfio.state(self.kernel).task

    @property
    def iommufd(self) -> Any:
        """iommufd's per-kernel state (pinned_vm, bound devices, knobs such as dirty_tracking)."""
        return _iommufd.state(self.kernel)

    @property
    def kvm_config(self) -> Any:
        """KVM's configuration (slots, address spaces, caps) to model another architecture."""
        return _kvm.state(self.kernel).config

    @property
    def dmesg(self) -> list[str]:
        return self.kernel.dmesg

    @property
    def files(self) -> dict[int, MockFile]:
        """The mock kernel's open files by fd."""
        return self.kernel.files

    def file(self, fd: int) -> MockFile:
        """The mock file behind ``fd`` (an object's ``fileno()``)."""
        return self.kernel.files[fd]

    def iommu(self, container: Any) -> Any:
        """The IOMMU driver object behind a container (``container.fileno()``), or None."""
        return getattr(self.file(container.fileno()), "iommu", None)

    def dma_mappings(self, container: Any) -> list[tuple[int, int, int]]:
        """The type1 IOMMU's mappings behind ``container`` as the kernel holds them:
        ``(iova, size, vaddr)``, ascending."""
        with self.kernel.lock:
            return [(e.iova, e.size, e.vaddr) for e in self.iommu(container).entries()]

    def ioas_areas(self, ioas: Any) -> list[tuple[int, int, int]]:
        """The areas of a pyvfio :class:`~pyvfio.iommufd.Ioas` as its mock iommufd holds them:
        ``(iova, length, vaddr)``, ascending."""
        with self.kernel.lock:
            obj = self.file(ioas.iommufd.fileno()).objects[ioas.id]  # type: ignore[attr-defined]
            return [(a.iova, a.length, a.vaddr(a.iova)) for a in obj.areas]

    def memslots(self, vm: Any) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        """The memslots of a pyvfio :class:`~pyvfio.kvm.Vm` as the mock KVM holds them:
        ``(as_id, slot) -> (gpa, size, hva, flags)``."""
        page = 4096
        with self.kernel.lock:
            slots = self.file(vm.fileno()).slots  # type: ignore[attr-defined]
            return {(s.as_id, s.id): (s.base_gfn * page, s.npages * page, s.hva, s.flags)
                    for s in slots.values()}

    def write_param(self, module: str, name: str, value: str) -> "Machine":
        """Set a module parameter in the machine's sysfs (``allow_unsafe_interrupts``...)."""
        _vfio.state(self.kernel).write_param(module, name, value)
        return self

    def driver_override(self, bdf: str) -> str | None:
        """``bdf``'s driver_override as the kernel shows it (None when cleared: "(null)")."""
        path = self.kernel.host.dev_path(bdf, "driver_override")
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            return None
        return None if text in ("", "(null)") else text

    def resources(self) -> dict[str, Any]:
        """What a user of this kernel holds and must give back, as plain comparable values:

        * ``files``: the open mock files (``Kind:path``, sorted; VMs, vCPUs, containers,
          groups, device fds, /dev/iommu...; memslots, mappings and IOAS objects live in them),
        * ``pinned``: bytes the IOMMUs pinned (type1, sPAPR, iommufd: the task's locked_vm
          share) and ``pinned_vm`` (iommufd's VmPin),
        * ``irq_triggers``: eventfds the simulated devices hold for their interrupts,
        * ``drivers`` / ``overrides``: each device's driver and driver_override on the host.

        Compare a snapshot taken before a piece of code with one taken after (leak checks).
        """
        k = self.kernel
        with k.lock:
            files = sorted(f"{type(f).__name__}:{f.path}" for f in k.files.values())
        out: dict[str, Any] = {"files": files}
        st = k.state.get(_vfio.NAME)
        if st is not None:
            out["pinned"] = st.task.pinned
            out["irq_triggers"] = {bdf: sum(1 for t in getattr(e.sim, "triggers", ()) if t is not None)
                                   for bdf, e in sorted(st.devices.items())}
            out["drivers"] = {bdf: e.driver for bdf, e in sorted(st.devices.items())}
            out["overrides"] = {bdf: self.driver_override(bdf) for bdf in sorted(st.devices)}
        if _iommufd.NAME in k.state:
            out["pinned_vm"] = _iommufd.state(k).pinned_vm
        return out

    # -- dirty tracking -------------------------------------------------------------------------
    def set_dirty_semantics(self, semantics: str) -> "Machine":
        """type1 dirty reports: "exact" (the pages DMA wrote) or "pinned" (every mapped page)."""
        _dirty.set_semantics(self.kernel, semantics)
        return self

    def enable_device_logging(self, bdf: str, **kw: Any) -> Any:
        """Give the device at ``bdf`` a DMA logger (VFIO_DEVICE_FEATURE_DMA_LOGGING_*)."""
        return _dmalog.enable_device_logging(self.device(bdf), **kw)

    @staticmethod
    def mark_dirty(iommu: Any, iova: int, size: int) -> None:
        """What a device write through ``iommu`` (a type1 driver object) marks dirty."""
        _dirty.mark(iommu, iova, size)


def machine(backend: MockBackend) -> Machine:
    """The topology API of ``backend``'s mock kernel."""
    return Machine(backend)


def power_backend() -> MockBackend:
    """A mock backend shaped like the POWER9 pseries test guest: VFIO with only the sPAPR TCE
    IOMMU, edu at :data:`POWER_EDU_BDF` in group :data:`POWER_EDU_GROUP` bound to vfio-pci."""
    return MockBackend(power_kernel())


def bare_backend() -> MockBackend:
    """A mock backend on a kernel without subsystems (no VFIO, no KVM): for device-layer tests."""
    return MockBackend(MockKernel(subsystems=[]))


def standalone_device(kind: str = "edu", *, backend: MockBackend | None = None, **kw: Any) -> Device:
    """A :class:`pyvfio.vfio.device.Device` on a bare mock kernel with one simulated device and
    no IOMMU (DMA faults): for examples and unit tests of the device layer alone.

    ``backend``: a MockBackend to use (default: a new one on a kernel without subsystems).
    """
    be = backend if backend is not None else bare_backend()
    sim = DEVICE_KINDS[kind](be.kernel, **kw)
    fd = be.kernel.install(open_device_file(be.kernel, None, sim, owns_device=True))
    be.label(fd, f"vfio-device:{sim.name}")
    return Device(fd, name=sim.name, backend=be)


#: The seam calls :class:`FaultyBackend` intercepts (each logged, each can be made to fail).
#: ``host_write`` is a driver-core write of the backend's host (driver/unbind, driver_override,
#: drivers_probe; ``op`` is the file's name).
SEAM_CALLS = ("open", "close", "ioctl", "mmap", "munmap", "eventfd", "pread", "pwrite", "read", "write",
              "host_write")

#: Calls that release something: the real kernel's close(2) releases the fd even when it
#: answers EIO, so a fault campaign fails these *after* the call ran (``after=RELEASING``).
RELEASING = ("close", "munmap")


@dataclass
class Fault:
    """One fault rule of a :class:`FaultyBackend`: the ``nth`` matching call (1 = the next one)
    fails with ``errno``, and so does every later one for ``times`` calls in all (None: from
    then on). ``call`` "*" matches every seam call. ``after``: the call is made first and then
    reported failed (close(2) releases the fd even when it answers EIO; munmap of a half-done
    range); a tuple of call names (e.g. :data:`RELEASING`) does so for those calls only.
    ``hits`` counts failures so far."""

    call: str
    op: str | None
    errno: int
    nth: int = 1
    times: int | None = 1
    after: "bool | tuple[str, ...]" = False
    seen: int = 0
    hits: int = 0

    def matches(self, call: str, op: str | None) -> bool:
        return (self.call == "*" or self.call == call) and (self.op is None or self.op == op)

    def runs_first(self, call: str) -> bool:
        """The failing ``call`` is made before the failure is reported (see ``after``)."""
        return call in self.after if isinstance(self.after, tuple) else self.after

    def fires(self) -> bool:
        """Count one matching call; True when it must fail."""
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


class FaultyBackend:
    """A backend proxy: every seam call is logged in :attr:`calls` as ``(call, op)`` (``op`` is
    the ioctl's kernel name, the path for ``open``, else None), then passed to ``inner`` unless a
    :class:`Fault` rule says it fails; the failure is the typed error the seam raises for that
    errno (``op`` as the real backend names it).

    ::

        >>> import errno
        >>> from pyvfio.kvm import Kvm
        >>> faulty = FaultyBackend(MockBackend())
        >>> _ = faulty.fail("ioctl", "KVM_CREATE_VM", errno.ENOMEM)     # the next one, once
        >>> with Kvm(backend=faulty) as kvm:
        ...     try:
        ...         kvm.create_vm()
        ...     except OSError as e:
        ...         print(e.errno == errno.ENOMEM, e.op)
        ...     kvm.create_vm().close()                                  # the rule is spent
        True KVM_CREATE_VM
        >>> faulty.count("ioctl", "KVM_CREATE_VM")
        2

    ``fail()`` adds a rule (``nth``: which matching call fails first; ``times``: how many fail,
    None for all later ones); :meth:`mark` / :meth:`since` tell what a piece of code issued
    (``since(mark) == []`` proves a check happened before any syscall). Thread-safe.
    """

    def __init__(self, inner: Any, faults: "list[Fault] | None" = None) -> None:
        self._inner = inner
        self.faults: list[Fault] = list(faults or [])
        self.calls: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self.name = getattr(inner, "name", "faulty")
        # what went through this proxy and is not given back yet (see live_mmaps/live_eventfds)
        self._mapped: dict[int, int] = {}      # page-aligned start -> end of each live range
        self._eventfds: set[int] = set()
        self._host: Any = None

    def fail(self, call: str, op: str | None = None, err: int = _errno.EIO, *, nth: int = 1,
             times: int | None = 1, after: "bool | tuple[str, ...]" = False) -> Fault:
        """Make the ``nth`` next ``call`` (one of :data:`SEAM_CALLS`, or "*" for any) matching
        ``op`` (None: any) fail with ``err``; ``times`` calls fail in all (None: every later one)."""
        if call != "*" and call not in SEAM_CALLS:
            raise ValueError(f"unknown seam call {call!r}; known: {', '.join(SEAM_CALLS)}")
        rule = Fault(call, op, err, nth, times, after)
        with self._lock:
            self.faults.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every fault rule."""
        with self._lock:
            self.faults.clear()

    def mark(self) -> int:
        """A position in :attr:`calls`, for :meth:`since`."""
        return len(self.calls)

    def since(self, mark: int) -> list[tuple[str, str | None]]:
        """The calls issued since ``mark``."""
        return self.calls[mark:]

    def count(self, call: str, op: str | None = None) -> int:
        """How many ``call`` (matching ``op``) were issued, failed ones included."""
        return sum(1 for c, o in self.calls if c == call and (op is None or o == op))

    def _through(self, call: str, op: str | None, fn: Callable[[], Any], path: str | None = None) -> Any:
        with self._lock:
            self.calls.append((call, op))
            rule = next((f for f in self.faults if f.matches(call, op) and f.fires()), None)
        if rule is None:
            return fn()
        if rule.runs_first(call):
            try:
                fn()
            except OSError:
                pass
        raise error_from_errno(rule.errno, op=op if call in ("ioctl", "host_write") else call, path=path)

    # -- what is still held ------------------------------------------------------------------
    def live_mmaps(self) -> list[tuple[int, int]]:
        """The (address, length) ranges mmap'd through this proxy and not munmap'd yet."""
        with self._lock:
            return [(lo, hi - lo) for lo, hi in sorted(self._mapped.items())]

    def live_eventfds(self) -> list[int]:
        """The eventfds created through this proxy and not closed yet."""
        with self._lock:
            return sorted(self._eventfds)

    def _mapped_now(self, addr: int, length: int) -> int:
        with self._lock:
            self._mapped[addr] = addr + length
        return addr

    def _unmapped_now(self, addr: int, length: int) -> None:
        end = addr + length
        with self._lock:
            for lo, hi in list(self._mapped.items()):
                if hi <= addr or lo >= end:
                    continue
                del self._mapped[lo]
                if lo < addr:
                    self._mapped[lo] = addr
                if hi > end:
                    self._mapped[end] = hi

    def _closed_now(self, fd: int) -> None:
        self._inner.close(fd)
        with self._lock:
            self._eventfds.discard(fd)

    def _eventfd_now(self, fd: int) -> int:
        with self._lock:
            self._eventfds.add(fd)
        return fd

    @property
    def host(self) -> Any:
        """The inner backend's host, its driver-core writes logged and failed as ``host_write``."""
        if self._host is None:
            self._host = _FaultyHost(self, self._inner.host)
        return self._host

    # -- the seam ------------------------------------------------------------------------------
    def open(self, path: str, flags: int = O_RDWR_CLOEXEC) -> int:
        return self._through("open", path, lambda: self._inner.open(path, flags), path)

    def close(self, fd: int) -> None:
        self._through("close", None, lambda: self._closed_now(fd), self._inner.path_of(fd))

    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None,
              hint: str | None = None) -> int:
        name = op or request_name(request)
        return self._through("ioctl", name, lambda: self._inner.ioctl(fd, request, arg, op=op, hint=hint),
                             self._inner.path_of(fd))

    def mmap(self, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        return self._through("mmap", None, lambda: self._mapped_now(
            self._inner.mmap(length, prot, flags, fd, offset), length))

    def munmap(self, addr: int, length: int) -> None:
        def run() -> None:
            self._inner.munmap(addr, length)
            self._unmapped_now(addr, length)
        self._through("munmap", None, run)

    def eventfd(self, initval: int = 0, flags: int = os.EFD_CLOEXEC) -> int:
        return self._through("eventfd", None, lambda: self._eventfd_now(self._inner.eventfd(initval, flags)))

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self._through("pread", None, lambda: self._inner.pread(fd, size, offset))

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return self._through("pwrite", None, lambda: self._inner.pwrite(fd, data, offset))

    def read(self, fd: int, size: int) -> bytes:
        return self._through("read", None, lambda: self._inner.read(fd, size))

    def write(self, fd: int, data: bytes) -> int:
        return self._through("write", None, lambda: self._inner.write(fd, data))

    def __getattr__(self, name: str) -> Any:  # sysfs_root, kernel, label, path_of...
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<FaultyBackend over {self._inner!r} faults={len(self.faults)}>"


class _FaultyHost:
    """A backend host whose ``write`` (the driver-core files) goes through a FaultyBackend."""

    def __init__(self, faulty: FaultyBackend, inner: Any) -> None:
        self._faulty = faulty
        self._inner = inner

    def write(self, path: str, value: str) -> None:
        op = os.path.basename(path)
        if op == "unbind":
            op = "driver/unbind"
        self._faulty._through("host_write", op, lambda: self._inner.write(path, value), path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


__all__ = ["Machine", "machine", "power_backend", "bare_backend", "standalone_device", "FakeHost",
           "sample_host", "limits_text", "POWER_EDU_BDF", "POWER_EDU_GROUP", "Edu", "E1000e",
           "SimPciDevice", "FaultyBackend", "Fault", "SEAM_CALLS", "RELEASING"]
