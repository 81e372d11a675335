"""One Vm's memslots changed from several threads (issue 21, item 2), on the mock and /dev/kvm.

Eight threads add, move, re-flag and delete memslots of one VM (managed API) or drive the raw
setter with ids of their own, with a tiny switch interval. Afterwards the VM holds exactly the
slots each thread kept (pyvfio's bookkeeping and, on the mock, the kernel's own table), and no
thread saw a spurious EINVAL/EEXIST from the shared argument struct being refilled under it.
"""

from __future__ import annotations

import errno
import mmap

import pytest
from scenarios import run_threads

from pyvfio.errors import PyvfioError
from pyvfio.kvm import GuestMemory

pytestmark = pytest.mark.backends("mock", "kvm")

THREADS = 8
ROUNDS = 24
PAGE = mmap.PAGESIZE
SPAN = 1 << 24        # guest-physical span per thread
RAW_ID = 1000         # raw slots: ids RAW_ID + thread * ROUNDS + i



def _kernel_slots(vm) -> dict[int, tuple[int, int, int, int]] | None:
    """The mock kernel's memslots: slot -> (gpa, size, hva, flags); None on a real kernel."""
    kernel = getattr(vm.backend, "kernel", None)
    if kernel is None:
        return None
    f = kernel.files[vm.fileno()]
    return {k: (s.base_gfn * PAGE, s.npages * PAGE, s.hva, s.flags) for k, s in f.slots.items()}


def _assert_exists(vm, gpa: int) -> None:
    """On any kernel: a new one-page slot at ``gpa`` overlaps a live one (EEXIST)."""
    with pytest.raises(PyvfioError) as e:
        vm.set_user_memory_region(vm.max_slots - 1, 0, gpa, PAGE, 0x10000000)
    assert e.value.errno == errno.EEXIST


def test_parallel_managed_memslots(vm, backend, switchy):
    mem = GuestMemory.anonymous(THREADS * ROUNDS * PAGE, backend=backend)
    try:
        def worker(t: int):
            def run() -> None:
                slots = []
                for i in range(ROUNDS):
                    off = (t * ROUNDS + i) * PAGE
                    s = vm.add_memslot(mem, t * SPAN + 2 * i * PAGE, PAGE, offset=off)
                    s.move(t * SPAN + (2 * i + 1) * PAGE)
                    if i % 3 == 0:
                        s.set_dirty_logging(True)
                    slots.append(s)
                for s in slots[1::2]:
                    s.delete()
            return run

        run_threads([worker(t) for t in range(THREADS)])
        want = {(t * SPAN + (2 * i + 1) * PAGE, PAGE, mem.addr + (t * ROUNDS + i) * PAGE,
                 1 if i % 3 == 0 else 0)
                for t in range(THREADS) for i in range(0, ROUNDS, 2)}
        live = vm.memslots
        assert {(s.gpa, s.size, s.hva, s.flags) for s in live} == want
        assert len({s.slot for s in live}) == len(live) == len(want)
        assert mem.users == len(want)
        kernel = _kernel_slots(vm)
        if kernel is not None:
            assert kernel == {s.slot: (s.gpa, s.size, s.hva, s.flags) for s in live}
        else:
            for gpa, *_ in want:
                _assert_exists(vm, gpa)
        for s in live:
            s.delete()
        assert mem.users == 0
    finally:
        mem.users = 0
        mem.close()


def test_parallel_raw_setter(vm, backend, switchy):
    mem = GuestMemory.anonymous(THREADS * ROUNDS * PAGE, backend=backend)
    try:
        def worker(t: int):
            def run() -> None:
                for i in range(ROUNDS):
                    sid, hva = RAW_ID + t * ROUNDS + i, mem.addr + (t * ROUNDS + i) * PAGE
                    vm.set_user_memory_region(sid, 0, t * SPAN + 2 * i * PAGE, PAGE, hva)
                    vm.set_user_memory_region(sid, 0, t * SPAN + (2 * i + 1) * PAGE, PAGE, hva)  # move
                    if i % 2:
                        vm.set_user_memory_region(sid, 0, t * SPAN + (2 * i + 1) * PAGE, 0, hva)
            return run

        run_threads([worker(t) for t in range(THREADS)])
        want = {RAW_ID + t * ROUNDS + i: (t * SPAN + (2 * i + 1) * PAGE, PAGE,
                                          mem.addr + (t * ROUNDS + i) * PAGE, 0)
                for t in range(THREADS) for i in range(0, ROUNDS, 2)}
        kernel = _kernel_slots(vm)
        if kernel is not None:
            assert kernel == want
        else:
            for gpa, *_ in want.values():
                _assert_exists(vm, gpa)
        for sid, (gpa, _size, hva, _flags) in want.items():
            vm.set_user_memory_region(sid, 0, gpa, 0, hva)
    finally:
        mem.close()
