"""Helpers shared by the tests/kvm/ files (their fixtures are in tests/kvm/conftest.py).

Every KVM scenario runs twice: on the mock kernel and on the host's real /dev/kvm (``[mock]`` and
``[kvm]`` of ``@pytest.mark.backends("mock", "kvm")``; the latter marked ``kvm``: skipped with the
reason where /dev/kvm is missing, a failure under PYVFIO_REQUIRE_KVM=1). Expected errnos are the
kernel's (virt/kvm/kvm_main.c); the same expectation on both backends is what makes the mock
trustworthy.
"""

from __future__ import annotations

import errno
import mmap
from typing import Any, Callable


from pyvfio.errors import PyvfioError
from pyvfio.kvm import GuestMemory, MemSlot, Vm, guestcode
from pyvfio.seam import get_backend

#: Guest layout used by the vCPU tests: code slot at gpa 0 (entry 0x1000), data slot below 1 MiB.
CODE_GPA, CODE_SIZE, ENTRY = 0x0, 0x10000, 0x1000
DATA_GPA, DATA_PAGES = 0x40000, 184  # 2 * 64 + 56: exercises the CLEAR tail rule
PAGE = mmap.PAGESIZE


def make_backend(name: str) -> Any:
    """A fresh backend for the backend named ``name``: a new mock kernel for ``mock``, else the
    real one (``kvm``)."""
    if name == "mock":
        from pyvfio.seam.mock import MockBackend

        return MockBackend()
    return get_backend("real")


def err(fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """Run ``fn``; "ok" or the errno name of the PyvfioError it raised."""
    try:
        fn(*args, **kw)
    except PyvfioError as e:
        return errno.errorcode[e.errno]
    return "ok"


def mock_ioctls(vm: Vm) -> int | None:
    """Number of ioctls the mock VM file has seen (None on the real kernel)."""
    kernel = getattr(vm.backend, "kernel", None)
    if kernel is None:
        return None
    return kernel.files[vm.fileno()].nr_ioctls


class Guest:
    """A VM with a code slot and a dirty-logged data slot; runs guestcode programs."""

    def __init__(self, vm: Vm, *, log_dirty: bool = True, data_pages: int = DATA_PAGES) -> None:
        be = vm.backend
        self.vm = vm
        self.code = GuestMemory.anonymous(CODE_SIZE, backend=be)
        self.data = GuestMemory.anonymous(data_pages * PAGE, backend=be)
        self.code_slot: MemSlot = vm.add_memslot(self.code, CODE_GPA)
        self.slot: MemSlot = vm.add_memslot(self.data, DATA_GPA, log_dirty=log_dirty)
        self.vcpu = vm.create_vcpu()

    def write_pages(self, pages: list[int], value: int = 0xA5, *, offset: int = 0x10) -> None:
        """Make the vCPU store ``value`` in each of ``pages`` of the data slot, then halt."""
        prog = guestcode.write_pages([self.slot.gpa + p * PAGE + offset for p in pages], value)
        assert ENTRY + len(prog) <= CODE_SIZE
        self.code.write(ENTRY, prog)
        self.vcpu.setup_real_mode(ENTRY)
        self.vcpu.run_until_halt()
        for p in pages:
            assert self.data.read(p * PAGE + offset, 1) == bytes([value])

    def close(self) -> None:
        self.vm.close()
        self.code.close()
        self.data.close()
