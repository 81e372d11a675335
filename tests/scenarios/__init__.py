"""Scenario functions written once and run on both kernels.

A scenario takes an :class:`Env` (which backend, which device, how to read locked memory) and
asserts what the kernel did. tests/vfio/test_type1.py runs each ``scenario_*`` of
tests/scenarios/type1.py as ``test_scenario``, parametrized by ``@pytest.mark.backends`` (see
tests/conftest.py): on a fresh mock kernel and inside the QEMU guests (real VFIO).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyvfio.seam import Backend, request_name
from pyvfio.testing import machine


@dataclass
class Env:
    """Where a scenario runs."""

    #: "mock" or "real"
    kind: str
    #: A fresh backend for this scenario (the mock: a new kernel; real: the real backend).
    make_backend: Callable[[], Backend]
    #: The vfio-pci bound edu device.
    bdf: str = "0000:00:03.0"
    #: Free-form facts about the machine (the guest's info JSON, the IOMMU variant...).
    facts: dict[str, Any] = field(default_factory=dict)

    def backend(self) -> Backend:
        return self.make_backend()

    @property
    def is_mock(self) -> bool:
        return self.kind == "mock"


def scenario_id(scenario: Callable[..., Any]) -> str:
    """The test id of a scenario function: its name without ``scenario_``."""
    return scenario.__name__.removeprefix("scenario_")


def guest_env(guest_info: dict[str, Any], guest_variant: str, *, iommufd: bool = False) -> Env:
    """The Env of a guest test: the real backend and the edu device the test bed's agent bound
    to vfio-pci (the test fails, not skips, when the agent did not bind it, or with ``iommufd``
    when the guest has no /dev/iommu)."""
    import pytest

    from pyvfio.seam import get_backend

    edu = [d for d in guest_info["devices"] if d.get("name") == "edu" and d.get("bound")]
    if not edu:
        pytest.fail(f"the guest agent did not bind edu to vfio-pci: {guest_info['devices']}", pytrace=False)
    if iommufd and not guest_info.get("iommufd"):
        pytest.fail(f"no /dev/iommu in the {guest_variant} guest: not the iommufd kernel?", pytrace=False)
    return Env("real", lambda: get_backend("real"), bdf=edu[0]["bdf"],
               facts={"variant": guest_variant, "guest": guest_info})


def kmsg_open() -> int | None:
    """/dev/kmsg positioned at its end (None where unreadable), to see new kernel lines."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def kmsg_read(fd: int) -> list[str]:
    """The kernel lines logged since the last read of ``fd`` (from :func:`kmsg_open`)."""
    lines = []
    while True:
        try:
            rec = os.read(fd, 8192)
        except BlockingIOError:
            break
        except OSError:  # EPIPE: overwritten records; keep reading
            continue
        if not rec:
            break
        lines.append(rec.decode(errors="replace").split(";", 1)[-1].strip())
    return lines


def assert_unmapped_write_faults(env: Env, be: Backend, edu: Any, iova: int, dst: Any) -> None:
    """edu writes 64 bytes to the unmapped ``iova``: nothing lands in the first page of ``dst``,
    and intel's vIOMMU (and the mock) log a DMAR fault naming the address; QEMU's amd-iommu
    drops the write without a guest-visible event.

    intel's dmar_fault() prints "DRHD: handling fault status" and the per-fault line under one
    ratelimit (5 s, burst 10), so after earlier faults the address line can be dropped while the
    status line is kept: then the write is retried once after the ratelimit interval."""

    def write() -> None:
        edu.from_device(iova, 64)  # unmapped now
        assert dst.read(0, 4096) == bytes(4096), "a DMA write to an unmapped IOVA landed"

    def names_iova(log: list[str]) -> bool:
        return any(f"{iova:#x}" in line for line in log)

    if env.is_mock:
        write()
        log = machine(be).dmesg  # type: ignore[attr-defined]
        assert names_iova(log), log[-10:]
        return
    kmsg = kmsg_open() if env.facts.get("variant") == "intel" else None
    if kmsg is None:  # no guest-visible fault event (amd, virtio), or /dev/kmsg unreadable
        write()
        return
    log: list[str] = []
    try:
        for attempt in range(2):
            if attempt:
                time.sleep(5.1)  # DEFAULT_RATELIMIT_INTERVAL
            write()
            for _ in range(20):  # the fault is reported asynchronously
                log += kmsg_read(kmsg)
                if names_iova(log):
                    return
                time.sleep(0.1)
    finally:
        os.close(kmsg)
    assert names_iova(log), log[-10:]


def locked_vm(backend: Backend) -> int:
    """The process's locked memory as the kernel accounts it (VmLck; on the mock, the real VmLck
    plus what the mock IOMMUs pinned)."""
    kernel = getattr(backend, "kernel", None)
    if kernel is not None:
        return int(kernel.state["vfio"].task.locked_vm())
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmLck:"):
                return int(line.split()[1]) * 1024
    return 0


def param_path(backend: Backend, module: str, name: str) -> str:
    return os.path.join(backend.sysfs_root, "module", module, "parameters", name)


class CountingBackend:
    """A backend proxy counting ioctls by op name (proves a check happened before any syscall)."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.ops: list[str] = []

    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None, hint: str | None = None) -> int:
        op = op or request_name(request)
        self.ops.append(op)
        return self._inner.ioctl(fd, request, arg, op=op, hint=hint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyBackend(CountingBackend):
    """A backend proxy that fails chosen ops with chosen errnos (fault injection)."""

    def __init__(self, inner: Backend, fail: dict[str, int]) -> None:
        super().__init__(inner)
        self.fail = dict(fail)

    def ioctl(self, fd: int, request: int, arg: Any = 0, *, op: str | None = None, hint: str | None = None) -> int:
        op = op or request_name(request)
        if op in self.fail:
            from pyvfio.errors import error_from_errno

            self.ops.append(op + "!")
            raise error_from_errno(self.fail[op], op=op, path=self._inner.path_of(fd))
        return super().ioctl(fd, request, arg, op=op, hint=hint)


def run_threads(workers) -> None:
    """Start every callable of ``workers`` in its own thread at once (a barrier), join them, and
    fail with every exception they raised."""
    import threading

    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def run(fn) -> None:
        try:
            start.wait()
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
