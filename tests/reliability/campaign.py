"""The fault campaign (issue 21): every multi-step operation of the public API, with each of
its syscalls failed in turn, on the mock kernel.

For one operation (a function of a :class:`~pyvfio.testing.FaultyBackend` that sets something
up and tears it down with ``with`` blocks, the way a user writes it):

1. run it once without faults and count its seam calls (N);
2. for every n in 1..N, every errno of :data:`ERRNOS` and both modes -- ``once`` (the nth call
   fails, the rest succeed) and ``always`` (the nth call and every later one fail) -- run it
   again on the same mock kernel with that fault, and check:

   * the error that comes out is *typed*: a :class:`~pyvfio.errors.PyvfioError` carrying an
     errno and the name of the failed op (never a bare OSError, AttributeError, TypeError,
     KeyError, RuntimeError...); a fault the library absorbs (no error) is counted apart;
   * nothing is left behind: the mock kernel's open files, pinned memory (type1/sPAPR/iommufd),
     the simulated devices' interrupt eventfds, each device's driver and driver_override
     (:meth:`pyvfio.testing.Machine.resources`), the process's real fds (/proc/self/fd), and
     the mmaps and eventfds made through the backend (:meth:`FaultyBackend.live_mmaps`,
     :meth:`FaultyBackend.live_eventfds`). IOMMU mappings, memslots, IOAS/HWPT objects and
     vCPUs live in the mock's files, so an open file is how they would show.

close(2) and munmap(2) are failed *after* they ran (:data:`pyvfio.testing.RELEASING`): the
kernel releases an fd even when close answers EIO, so the library cannot be blamed for it.

The driver-core writes of ``bind``/``unbind`` cannot be undone while every write fails
(``always``): there the check is that one plain ``unbind`` afterwards (faults cleared) gives the
host back exactly, which is what the remembered original driver is for.

Run by tests/reliability/test_faults.py (asserts) and tools/fault_campaign.py (prints figures).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from typing import Any, Callable

from pyvfio.errors import PyvfioError
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import RELEASING, FaultyBackend, machine, power_backend

PAGE = 4096
BDF = "0000:00:03.0"          # edu, group 3, vfio-pci
NIC = "0000:00:02.0"          # e1000e, group 2, on its host driver
ERRNOS = (errno.EIO, errno.ENOMEM, errno.EINVAL, errno.EBUSY, errno.EINTR)
MODES = ("once", "always")


# -- the operations --------------------------------------------------------------------------
def op_open_device(be: FaultyBackend) -> None:
    """open_device: container, group found through sysfs and attached, type1v2 set, device fd."""
    from pyvfio.vfio import open_device

    with open_device(BDF, backend=be) as od:
        od.device.info


def op_container_steps(be: FaultyBackend) -> None:
    """The same set-up step by step: Container, Group, attach, set_iommu, open_device."""
    from pyvfio.vfio import Container, Group

    with Container(backend=be) as c:
        g = c.attach(Group(3, backend=be))
        c.set_iommu("TYPE1v2").info()
        g.open_device(BDF)


def op_type1_large_map(be: FaultyBackend) -> None:
    """A 16 MiB THP buffer mapped in one piece, then in 1 MiB chunks through a DmaMapper."""
    from pyvfio.services.dma import DmaBuffer, DmaMapper
    from pyvfio.vfio import open_device

    with open_device(BDF, backend=be) as od, DmaBuffer(16 << 20, backend=be) as buf:
        with od.iommu.map(buf, 1 << 32):
            pass
        mapper = DmaMapper(od.iommu)
        for i in range(8):
            mapper.map(buf, size=1 << 20, offset=i << 20)
        mapper.unmap_all()


def op_type1_map_several_and_close(be: FaultyBackend) -> None:
    """Four buffers mapped, then the container closed with the mappings live (close unwinds)."""
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio import open_device

    bufs = [DmaBuffer(2 * PAGE, hugepages=None, backend=be) for _ in range(4)]
    try:
        with open_device(BDF, backend=be) as od:
            for i, b in enumerate(bufs):
                od.iommu.map(b, (i + 1) << 20)
    finally:
        for b in bufs:
            b.close()


def op_iommufd(be: FaultyBackend) -> None:
    """iommufd: /dev/iommu, IOAS, cdev bound and attached, a HWPT, fixed and kernel-chosen maps."""
    from pyvfio.iommufd import IommuFd
    from pyvfio.services.dma import DmaBuffer

    with DmaBuffer(4 * PAGE, hugepages=None, backend=be) as buf, IommuFd(backend=be) as fd:
        ioas = fd.ioas_alloc()
        dev = fd.bind(BDF)
        dev.attach(ioas)
        ioas.map(buf, 1 << 20, size=PAGE)
        m = ioas.map(buf, size=PAGE, offset=PAGE)
        m.unmap()
        ioas.map(buf, size=2 * PAGE, offset=2 * PAGE)
        hwpt = fd.hwpt_alloc(dev.dev_id, ioas)
        dev.attach(hwpt)
        dev.attach(ioas)
        hwpt.destroy()


def op_iommufd_open_device(be: FaultyBackend) -> None:
    """iommufd.open_device (IOAS, bind, attach in one call), two maps, then close with them live."""
    from pyvfio.iommufd import open_device
    from pyvfio.services.dma import DmaBuffer

    with DmaBuffer(2 * PAGE, hugepages=None, backend=be) as buf, open_device(BDF, backend=be) as od:
        od.ioas.map(buf, 1 << 20, size=PAGE)
        od.ioas.map(buf, size=PAGE, offset=PAGE)


def op_spapr(be: FaultyBackend) -> None:
    """sPAPR TCE v2: memory registered, a DDW window created, maps in both windows, teardown."""
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio import Container, Group

    with DmaBuffer(16 * PAGE, hugepages=None, backend=be) as buf, Container(backend=be) as c:
        c.attach(Group(0, backend=be))
        iommu = c.set_iommu("SPAPR_TCE_v2")
        iommu.register(buf)
        iommu.map(buf, 0, size=4 * PAGE)
        w = iommu.create_window(PAGE, 1 << 30)
        iommu.map(buf, w.start + (1 << 20), size=8 * PAGE, offset=8 * PAGE)
        m = iommu.map(buf, 1 << 20, size=PAGE, offset=4 * PAGE)
        m.unmap()


def op_kvm(be: FaultyBackend) -> None:
    """KVM: a VM, guest memory in three memslots (one moved, one dirty-logged), two vCPUs."""
    from pyvfio.kvm import GuestMemory, Kvm

    with Kvm(backend=be) as kvm, GuestMemory.anonymous(16 * PAGE, backend=be) as mem:
        with kvm.create_vm() as vm:
            a = vm.add_memslot(mem, 0, 4 * PAGE)
            b = vm.add_memslot(mem, 1 << 20, 4 * PAGE, offset=4 * PAGE)
            vm.add_memslot(mem, 2 << 20, 8 * PAGE, offset=8 * PAGE)
            b.move(3 << 20)
            a.set_dirty_logging(True)
            a.get_dirty_log()
            vm.create_vcpu()
            vm.create_vcpu()
            b.delete()


def op_dirty_tracker(be: FaultyBackend) -> None:
    """DirtyTracker on type1: start, windowed report, unmap_and_report, stop."""
    from pyvfio.services.dirty import DirtyTracker
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio import open_device

    with open_device(BDF, backend=be) as od, DmaBuffer(8 * PAGE, hugepages=None, backend=be) as buf:
        a = od.iommu.map(buf, 1 << 20, size=4 * PAGE)
        b = od.iommu.map(buf, 2 << 20, size=4 * PAGE, offset=4 * PAGE)
        with DirtyTracker(od.iommu, max_bitmap_bytes=8) as t:
            t.report(1 << 20, 2 << 20)
            t.unmap_and_report(b)
        a.unmap()


def op_device_irqs(be: FaultyBackend) -> None:
    """Device interrupts: MSI with created eventfds, a loopback trigger, disable, INTx left on."""
    from pyvfio.vfio import open_device
    from pyvfio.vfio.device import PciIrq

    with open_device(BDF, backend=be) as od:
        dev = od.device
        dev.enable_irq(PciIrq.MSI)
        dev.trigger_irq(PciIrq.MSI)
        dev.disable_irq(PciIrq.MSI)
        dev.enable_irq(PciIrq.INTX)  # closed by the device's close


def op_device_region_mmap(be: FaultyBackend) -> None:
    """BAR0 mmapped twice (whole areas, and one page), one closed, the other left to close()."""
    from pyvfio.vfio import open_device

    with open_device(BDF, backend=be) as od:
        dev = od.device
        for m in dev.mmap_areas(0):
            m.read32(0)
            m.close()
        dev.mmap(0, 0, PAGE).read32(4)


def op_kvm_eventfds(be: FaultyBackend) -> None:
    """KVM eventfds: an in-kernel irqchip, irqfds and ioeventfds with created eventfds, a vCPU
    with its kvm_run mmap; one irqfd closed, the rest left to the VM's close."""
    from pyvfio.kvm import Kvm

    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        vm.irqfd(5).close()
        vm.irqfd(6)
        vm.ioeventfd(0x1000)
        vm.ioeventfd(0x10, 2, pio=True)
        vm.create_vcpu()


def _cli(be: FaultyBackend, *args: str) -> tuple[int, dict[str, Any]]:
    import pyvfio.cli as climod

    out = StringIO()
    saved = climod.new_backend
    climod.new_backend = lambda name: be  # the CLI's one backend factory
    try:
        with redirect_stdout(out):
            rc = climod.cli.main(["--json", "--backend", "mock", *args], standalone_mode=False)
    finally:
        climod.new_backend = saved
    return rc, json.loads(out.getvalue())


def checkpoint(be: FaultyBackend) -> None:
    """The state a failure from here on must leave behind (each CLI verb is all or nothing)."""
    be.__dict__["_checkpoint"] = snapshot(be)


def op_cli_bind_unbind(be: FaultyBackend) -> None:
    """``pyvfio bind --yes`` of the NIC (host driver -> vfio-pci), then ``pyvfio unbind --yes``;
    a failed verb must leave the host as that verb found it."""
    for verb in ("bind", "unbind"):
        checkpoint(be)
        rc, doc = _cli(be, verb, "--yes", NIC)
        if rc != 0:
            raise CliError(rc, doc)


class CliError(Exception):
    """A CLI run that exited non-zero: its exit code and JSON error document."""

    def __init__(self, rc: int, doc: dict[str, Any]) -> None:
        super().__init__(rc, doc)
        self.rc, self.doc = rc, doc


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[FaultyBackend], None]
    make: Callable[[], Any] = MockBackend
    #: After an ``always`` trial, a recovery that must give the state back (faults cleared).
    recover: Callable[[FaultyBackend], None] | None = None


def _recover_binding(be: FaultyBackend) -> None:
    rc, doc = _cli(be, "unbind", "--yes", NIC)
    if rc != 0:
        raise CliError(rc, doc)


def _dirty_backend() -> MockBackend:
    be = MockBackend()
    machine(be).set_dirty_semantics("exact")
    return be


OPERATIONS: tuple[Operation, ...] = (
    Operation("open_device", op_open_device),
    Operation("container_steps", op_container_steps),
    Operation("type1_large_and_chunked_maps", op_type1_large_map),
    Operation("type1_map_several_then_close", op_type1_map_several_and_close),
    Operation("iommufd_ioas_hwpt_maps", op_iommufd),
    Operation("iommufd_open_device_close", op_iommufd_open_device),
    Operation("spapr_register_window_map", op_spapr, power_backend),
    Operation("kvm_memslots_dirty_vcpus", op_kvm),
    Operation("dirty_tracker", op_dirty_tracker, _dirty_backend),
    Operation("device_irqs", op_device_irqs),
    Operation("device_region_mmap", op_device_region_mmap),
    Operation("kvm_irqfd_ioeventfd", op_kvm_eventfds),
    Operation("cli_bind_unbind", op_cli_bind_unbind, recover=_recover_binding),
)


# -- checks ----------------------------------------------------------------------------------
def untyped_reason(e: BaseException) -> str | None:
    """None when ``e`` is a typed failure, else why not."""
    if isinstance(e, CliError):
        d = e.doc
        if not isinstance(d.get("errno"), int) or not d.get("op"):
            return f"CLI exit {e.rc} without errno/op: {d.get('error')}"
        return None
    if isinstance(e, PyvfioError):
        if not isinstance(e.errno, int):
            return f"{type(e).__name__} without errno: {e}"
        if not e.op:
            return f"{type(e).__name__} without op: {e}"
        return None
    return f"{type(e).__name__}: {e}"


def _proc_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot(be: FaultyBackend) -> dict[str, Any]:
    """Everything that must come back to its value before the operation."""
    snap = machine(be._inner).resources()
    snap["process_fds"] = _proc_fds()
    snap["mmaps"] = be.live_mmaps()
    snap["eventfds"] = be.live_eventfds()
    return snap


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


@dataclass
class Finding:
    n: int
    call: str
    errno: str
    mode: str
    kind: str        # "untyped" or "leak"
    detail: str


@dataclass
class Figures:
    operation: str
    syscalls: int = 0
    trials: int = 0
    typed: int = 0
    absorbed: int = 0
    untyped: int = 0
    leaks: int = 0
    findings: list[Finding] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"operation": self.operation, "syscalls": self.syscalls, "trials": self.trials,
                "typed": self.typed, "absorbed": self.absorbed, "untyped": self.untyped,
                "leaks": self.leaks}


def _quiet_run(op: Operation, be: FaultyBackend) -> BaseException | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed munmap warns ResourceWarning, by design
            op.run(be)
    except Exception as e:  # noqa: BLE001 - classified by the caller
        return e
    return None


def campaign(op: Operation, *, errnos: tuple[int, ...] = ERRNOS, modes: tuple[str, ...] = MODES,
             stride: int = 1) -> Figures:
    """Run ``op``'s campaign; ``stride`` > 1 fails only every stride-th call (quick runs)."""
    fig = Figures(op.name)
    inner = op.make()
    try:
        clean = FaultyBackend(inner)
        base = snapshot(clean)
        e = _quiet_run(op, clean)
        if e is not None:
            raise AssertionError(f"{op.name} fails without faults: {e!r}") from e
        calls = list(clean.calls)
        fig.syscalls = len(calls)
        if diff(base, snapshot(clean)):
            raise AssertionError(f"{op.name} leaks without faults: {diff(base, snapshot(clean))}")
        gc_was = gc.isenabled()
        gc.disable()  # no finalizer may tidy up behind the check
        try:
            for n in range(1, len(calls) + 1, stride):
                for err in errnos:
                    for mode in modes:
                        inner = _trial(op, inner, n, err, mode, calls, fig)
        finally:
            if gc_was:
                gc.enable()
    finally:
        machine(inner).shutdown()
    return fig


def _trial(op: Operation, inner: Any, n: int, err: int, mode: str,
           calls: list[tuple[str, str | None]], fig: Figures) -> Any:
    be = FaultyBackend(inner)
    before = snapshot(be)
    be.fail("*", err=err, nth=n, times=1 if mode == "once" else None, after=RELEASING)
    e = _quiet_run(op, be)
    be.clear()
    fig.trials += 1
    call = f"{calls[n - 1][0]} {calls[n - 1][1] or ''}".strip() if n <= len(calls) else "?"
    name = errno.errorcode[err]
    if e is None:
        fig.absorbed += 1
        fig.findings.append(Finding(n, call, name, mode, "absorbed", "no error surfaced"))
    else:
        why = untyped_reason(e)
        if why is None:
            fig.typed += 1
        else:
            fig.untyped += 1
            fig.findings.append(Finding(n, call, name, mode, "untyped", why))
    expected = be.__dict__.get("_checkpoint", before) if e is not None else before
    if mode == "always" and op.recover is not None:
        expected = before
        try:
            op.recover(be)
        except Exception as r:  # noqa: BLE001
            fig.findings.append(Finding(n, call, name, mode, "leak", f"recovery failed: {r!r}"))
    leaked = diff(expected, snapshot(be))
    if not leaked and expected is not before and op.recover is not None:
        op.recover(be)  # back to the start for the next trial
        leaked = diff(before, snapshot(be))
    del e
    if leaked:
        fig.leaks += 1
        fig.findings.append(Finding(n, call, name, mode, "leak", repr(leaked)))
        # start again on a fresh kernel: the leak would fail every later trial
        gc.collect()
        machine(inner).shutdown()
        return op.make()
    return inner


def summary(figs: list[Figures]) -> str:
    cols = ("operation", "syscalls", "trials", "typed", "absorbed", "untyped", "leaks")
    rows = [f.row() for f in figs]
    tot = {c: sum(r[c] for r in rows) for c in cols[1:]}
    tot["operation"] = "total"
    rows.append(tot)
    width = max(len(r["operation"]) for r in rows)
    lines = [f"{'operation':<{width}} " + " ".join(f"{c:>8}" for c in cols[1:])]
    for r in rows:
        lines.append(f"{r['operation']:<{width}} " + " ".join(f"{r[c]:>8}" for c in cols[1:]))
    return "\n".join(lines)
