"""Managed memslots: validation before the syscall, bookkeeping, backings, 32764 slots."""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import time
import tracemalloc

import pytest
from scenarios.kvm import mock_ioctls

from pyvfio import ioctls as I
from pyvfio.errors import (
    AlignmentError,
    ArgumentError,
    ExistsError,
    OverlapError,
    RangeError,
    StateError,
    UnsupportedError,
)
from pyvfio.kvm import GuestMemory, Kvm, MemFlag, guestcode
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import machine

pytestmark = pytest.mark.backends("mock", "kvm")

PAGE = mmap.PAGESIZE
MiB = 1 << 20


@pytest.fixture
def mem(backend):
    m = GuestMemory.anonymous(4 * MiB, backend=backend)
    yield m
    m.users = 0
    m.close()


def test_add_memslot_validates_before_the_syscall(vm, mem):
    s0 = vm.add_memslot(mem, 0x100000, MiB)
    before = mock_ioctls(vm)
    cases = [
        (AlignmentError, dict(gpa=0x800, size=PAGE)),
        (AlignmentError, dict(gpa=0x400000, size=PAGE + 1)),
        (RangeError, dict(gpa=0x400000, size=0)),
        (RangeError, dict(gpa=0x400000, size=8 * MiB)),                    # beyond the memory
        (AlignmentError, dict(gpa=0x400000, size=PAGE, offset=8)),
        (RangeError, dict(gpa=(1 << 52) - PAGE, size=2 * PAGE)),           # beyond 52-bit gpa
        (RangeError, dict(gpa=0x400000, size=PAGE, slot=vm.max_slots)),
        (ArgumentError, dict(gpa=0x400000, size=PAGE, slot=s0.id)),        # id in use
        (RangeError, dict(gpa=0x400000, size=PAGE, as_id=1)),              # one address space
        (OverlapError, dict(gpa=0x1FF000, size=2 * PAGE)),
        (OverlapError, dict(gpa=0x0FF000, size=2 * PAGE)),
        (OverlapError, dict(gpa=0x000000, size=4 * MiB)),                  # covers it
    ]
    for exc, kw in cases:
        with pytest.raises(exc) as info:
            vm.add_memslot(mem, **kw)
        assert isinstance(info.value, ValueError)
        assert str(info.value)  # says why
    with pytest.raises(AlignmentError):
        vm.add_memslot(gpa=0x400000, size=PAGE, hva=mem.addr + 8)          # raw unaligned hva
    with pytest.raises(ArgumentError):
        vm.add_memslot(gpa=0x400000, hva=mem.addr)                         # raw needs a size
    with pytest.raises(RangeError):  # oversized: more than KVM_MEM_MAX_NR_PAGES
        vm.add_memslot(gpa=0, size=(1 << 31) * PAGE, hva=0x1000_0000)
    with pytest.raises(RangeError):
        vm.add_memslot(gpa=0x400000, size=2 * MiB, hva=0x7FFF_FFF0_0000)   # beyond user space
    assert mock_ioctls(vm) == before
    # nothing was booked by the refused calls: next id is 1, the range is free
    s1 = vm.add_memslot(mem, 0x200000, MiB, offset=MiB)
    assert s1.id == 1 and [s.id for s in vm.memslots] == [0, 1]


def test_readonly_flag_depends_on_the_arch(backend, mem):
    with Kvm(backend=backend) as k, k.create_vm() as vm:
        s = vm.add_memslot(mem, 0, MiB, readonly=True)
        assert s.readonly and s.flags == MemFlag.READONLY
    mb = MockBackend()
    machine(mb).kvm_config.readonly_mem = False  # an arch without KVM_CAP_READONLY_MEM
    m2 = GuestMemory.anonymous(MiB, backend=mb)
    with Kvm(backend=mb) as k, k.create_vm() as vm:
        with pytest.raises(ArgumentError, match="READONLY_MEM"):
            vm.add_memslot(m2, 0, readonly=True)
    m2.close()


def test_move_toggle_delete_bookkeeping(vm, mem):
    a = vm.add_memslot(mem, 0x000000, MiB)
    b = vm.add_memslot(mem, 0x200000, MiB, offset=MiB, log_dirty=True)
    assert mem.users == 2
    before = mock_ioctls(vm)
    with pytest.raises(OverlapError):
        a.move(0x180000)
    with pytest.raises(AlignmentError):
        a.move(0x1234)
    assert mock_ioctls(vm) == before
    a.move(0x400000)
    assert vm.find_memslot(0x400000 + 5) is a and vm.find_memslot(0x10) is None
    a.move(0x100000)                      # next to b is fine now
    assert [s.gpa for s in vm.memslots] == [0x100000, 0x200000]
    b.set_dirty_logging(False)
    assert not b.log_dirty
    b.delete()
    b.delete()                            # idempotent
    with pytest.raises(StateError):
        b.move(0)
    assert mem.users == 1 and vm.memslots == [a]
    c = vm.add_memslot(mem, 0x200000, MiB, offset=MiB)
    assert c.id == b.id                   # lowest free id is reused
    with pytest.raises(StateError):
        mem.close()                       # still mapped by slots
    vm.close()
    assert mem.users == 0 and a.deleted and c.deleted


def test_kernel_refusal_books_nothing(vm, mem):
    """A slot made behind pyvfio's back makes the kernel answer EEXIST: no id or user leaks."""
    vm.set_user_memory_region(5, 0, 0x800000, MiB, mem.addr)
    with pytest.raises(ExistsError) as info:
        vm.add_memslot(mem, 0x800000, MiB)
    assert info.value.op == "KVM_SET_USER_MEMORY_REGION" and info.value.hint
    assert mem.users == 0 and vm.memslots == []
    assert vm.add_memslot(mem, 0, MiB).id == 0


def _guest_writes(vm, mem, slot_gpa, pages, code_gpa=0):
    """Run a program (placed at gpa code_gpa + 0x1000 inside ``mem``) storing into ``pages``."""
    prog = guestcode.write_pages([slot_gpa + p * PAGE + 0x20 for p in pages], 0x5A)
    mem.write(0x1000, prog)
    v = vm.create_vcpu()
    v.setup_real_mode(code_gpa + 0x1000)
    v.run_until_halt()
    v.close()


def test_memfd_backing_sees_guest_writes(vm):
    m = GuestMemory.memfd(MiB, backend=vm.backend)
    try:
        s = vm.add_memslot(m, 0, log_dirty=True)
        _guest_writes(vm, m, 0, [0x40, 0x41, 0x80])
        assert os.pread(m.fd, 1, 0x41 * PAGE + 0x20) == b"\x5a"
        assert s.get_dirty_log().pages().tolist() == [0x40, 0x41, 0x80]
        s.delete()
    finally:
        m.close()


@contextlib.contextmanager
def hugepages(n: int):
    """Reserve ``n`` more 2 MiB huge pages for the test, restoring the setting afterwards."""
    path = "/proc/sys/vm/nr_hugepages"
    try:
        old = int(open(path).read())
        with open(path, "w") as f:
            f.write(str(old + n))
    except OSError as e:
        pytest.skip(f"cannot reserve huge pages: {e}")
    try:
        got = int(open(path).read())
        if got < old + n:
            pytest.skip(f"asked for {old + n} huge pages, the kernel reserved {got}")
        yield
    finally:
        with open(path, "w") as f:
            f.write(str(old))


def test_hugetlbfs_backing(vm):
    with hugepages(2):
        m = GuestMemory.hugetlb(2 * MiB, backend=vm.backend)
        try:
            assert m.kind == "hugetlbfs" and m.page_size == 2 * MiB
            s = vm.add_memslot(m, 0, log_dirty=True)
            _guest_writes(vm, m, 0, [0x50, 0x90, 0xFF])
            assert m.read(0x90 * PAGE + 0x20, 1) == b"\x5a"
            assert s.get_dirty_log().pages().tolist() == [0x50, 0x90, 0xFF]
            s.delete()
        finally:
            m.close()


def test_readonly_slot_write_exits_as_mmio(backend):
    from pyvfio.kvm import VcpuExitError

    with Kvm(backend=backend) as k, k.create_vm() as vm:
        code = GuestMemory.anonymous(0x10000, backend=backend)
        rom = GuestMemory.anonymous(0x10000, backend=backend)
        vm.add_memslot(code, 0)
        vm.add_memslot(rom, 0x20000, readonly=True)
        code.write(0x1000, guestcode.write_pages([0x20010]))
        v = vm.create_vcpu()
        v.setup_real_mode(0x1000)
        with pytest.raises(VcpuExitError, match="MMIO: write of 1 bytes at gpa 0x20010"):
            v.run_until_halt()
        assert rom.read(0x10, 1) == b"\0"
        vm.close()
        code.close()
        rom.close()


def test_guest_memfd_slot(backend):
    with Kvm(backend=backend) as k, k.create_vm() as vm:
        if not vm.check_extension(I.KVM_CAP_GUEST_MEMFD):
            pytest.skip("no KVM_CAP_GUEST_MEMFD on this kernel")
        m = GuestMemory.anonymous(MiB, backend=backend)
        gm = vm.create_guest_memfd(MiB)
        s = vm.add_memslot(m, 0x100000, guest_memfd=gm)
        assert s.flags == MemFlag.GUEST_MEMFD
        with pytest.raises(ArgumentError):
            s.move(0x400000)                      # guest_memfd slots are immutable
        with pytest.raises(ArgumentError):
            vm.add_memslot(m, 0x400000, guest_memfd=gm, log_dirty=True)
        s.delete()
        vm.close()
        m.close()
    mb = MockBackend()
    machine(mb).kvm_config.guest_memfd = False
    with Kvm(backend=mb) as k, k.create_vm() as vm:
        with pytest.raises(UnsupportedError):
            vm.create_guest_memfd(MiB)


def test_no_leaks_on_close_and_errors(backend, no_fd_leak):
    m = GuestMemory.memfd(MiB, backend=backend)
    k = Kvm(backend=backend)
    vm = k.create_vm()
    vm.add_memslot(m, 0, log_dirty=True)
    v = vm.create_vcpu()
    dev = vm.create_vfio_device()
    io = vm.ioeventfd(0x10, 1, pio=True)
    with pytest.raises(ExistsError):
        vm.ioeventfd(0x10, 1, pio=True)   # its own eventfd is closed on the failure path
    k.close()                             # closes VM, vCPU, device, eventfds
    assert vm.closed and v.closed and dev.closed and not io.active
    assert m.users == 0
    m.close()


def test_32764_memslots_created_and_deleted(backend, capsys):
    """The reported maximum of memslots, each one page, created then deleted; bookkeeping measured."""
    with Kvm(backend=backend) as k, k.create_vm() as vm:
        n = vm.max_slots
        mem = GuestMemory.anonymous(n * PAGE, noreserve=True, backend=backend)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        slots = [vm.add_memslot(mem, i * PAGE, PAGE, offset=i * PAGE) for i in range(n)]
        t1 = time.perf_counter()
        booked = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert len(vm.memslots) == n and slots[-1].id == n - 1
        with pytest.raises(RangeError, match="in use"):
            vm.add_memslot(mem, n * PAGE, PAGE)        # no id left
        # the kernel agrees: one more id does not exist
        with pytest.raises(OSError):
            vm.set_user_memory_region(n, 0, n * PAGE, PAGE, mem.addr)
        assert vm.find_memslot(1234 * PAGE + 7) is slots[1234]
        t2 = time.perf_counter()
        for s in slots:
            s.delete()
        t3 = time.perf_counter()
        assert vm.memslots == [] and mem.users == 0
        with capsys.disabled():
            print(f"\n[{backend.name}] {n} memslots: create {(t1 - t0) / n * 1e6:.1f} us/slot, "
                  f"delete {(t3 - t2) / n * 1e6:.1f} us/slot, pyvfio bookkeeping "
                  f"{booked / 1024:.0f} KiB ({booked / n:.0f} B/slot)")
        mem.close()


def test_open_errors_are_typed(backend, no_fd_leak):
    from pyvfio.errors import NotFoundError

    with pytest.raises(NotFoundError) as info:
        Kvm("/dev/kvm-missing", backend=backend)
    assert info.value.path == "/dev/kvm-missing" and info.value.op == "open"


def test_address_spaces_are_separate_on_a_two_space_mock():
    """x86 with SMM has two memslot address spaces (KVM_CAP_MULTI_ADDRESS_SPACE = 2): the same
    gpa may be mapped once in each, ids are per space, and slot numbers carry as_id << 16."""
    be = MockBackend()
    machine(be).kvm_config.address_spaces = 2
    mem = GuestMemory.anonymous(MiB, backend=be)
    with Kvm(backend=be) as k, k.create_vm() as vm:
        assert vm.address_spaces == 2
        a = vm.add_memslot(mem, 0, MiB)
        b = vm.add_memslot(mem, 0, MiB, as_id=1)
        assert (a.id, b.id) == (0, 0) and b.slot == 1 << 16
        with pytest.raises(OverlapError):
            vm.add_memslot(mem, 0x80000, PAGE, as_id=1)
        with pytest.raises(RangeError):
            vm.add_memslot(mem, 0x200000, PAGE, as_id=2)
        assert vm.find_memslot(0x1000, as_id=1) is b
        b.delete()
        assert vm.memslots == [a]
    mem.close()
