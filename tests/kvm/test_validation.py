"""pyvfio refuses exactly what the kernel refuses: random memslot requests through the managed
API and, for each refusal, the same request raw against the kernel (real and mock)."""

from __future__ import annotations

import errno
import mmap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenarios.kvm import make_backend

from pyvfio import ioctls as I
from pyvfio.errors import (
    AlignmentError,
    ArgumentError,
    OverlapError,
    PyvfioError,
    RangeError,
    StateError,
    UnsupportedError,
)
from pyvfio.kvm import GuestMemory, Kvm, guestcode
from pyvfio.seam.mock import MockBackend
from pyvfio.testing import machine

pytestmark = pytest.mark.backends("mock", "kvm")

PAGE = mmap.PAGESIZE
MEM = 64 * PAGE

_state: dict[str, tuple] = {}


def _env(name: str):
    """One Kvm + guest memory per backend for the whole module (hypothesis reuses it)."""
    if name not in _state:
        be = make_backend(name)
        _state[name] = (Kvm(backend=be), GuestMemory.anonymous(MEM, backend=be))
    return _state[name]


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    for kvm, mem in _state.values():
        kvm.close()
        mem.close()
    _state.clear()


requests = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 80).map(lambda p: p * PAGE), st.integers(0, 80 * PAGE),
                  st.just((1 << 52) - PAGE)),                                     # gpa
        st.one_of(st.integers(0, 16).map(lambda p: p * PAGE), st.integers(0, 16 * PAGE)),  # size
        st.sampled_from([0, 0, 1, 2, 3, 8]),                                       # flags
        st.integers(0, 32).map(lambda p: p * PAGE),                                # offset in MEM
        st.sampled_from([None, None, None, 3, 32763, 32764, 1 << 16]),             # slot
    ),
    min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=requests)
def test_validation_matches_the_kernel(backend_name, reqs):
    kvm, mem = _env(backend_name)
    with kvm.create_vm() as vm:
        for gpa, size, flags, offset, slot in reqs:
            if size and offset + size > MEM:
                offset = 0
            as_id, sid = (slot >> 16, slot & 0xFFFF) if slot is not None else (0, None)
            try:
                vm.add_memslot(gpa=gpa, size=size, hva=mem.addr, offset=offset, slot=sid, as_id=as_id,
                               log_dirty=bool(flags & 1), readonly=bool(flags & 2))
                ok = True
            except ArgumentError as e:
                ok = False
                refusal = e
            if flags & 8:
                # unknown flag bits cannot be expressed through the managed API: check raw
                ok = False
                refusal = ArgumentError("flag 8")
            if ok:
                continue
            if sid is not None and (as_id << 16 | sid) in vm._slots:
                continue  # pyvfio refuses reuse of a live id; the kernel would modify the slot
            # the kernel, asked the same, refuses too (and with the errno matching the reason)
            raw_slot = (as_id << 16 | (sid if sid is not None else 999))
            try:
                vm.set_user_memory_region(raw_slot, flags, gpa, size, mem.addr + offset)
            except PyvfioError as e:
                want = errno.EEXIST if isinstance(refusal, OverlapError) else errno.EINVAL
                assert e.errno == want, (refusal, e)
            else:
                vm.set_user_memory_region(raw_slot, flags, gpa, 0, mem.addr + offset)
                raise AssertionError(f"pyvfio refused {refusal!r} but the kernel accepted "
                                     f"slot={raw_slot:#x} flags={flags} gpa={gpa:#x} size={size:#x}")


# -- the dirty ring: argument checks before the syscall; ring-full exit (mock) -------------------
def test_enable_dirty_ring_checks():
    be = MockBackend()
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        before = machine(be).file(vm.fileno()).nr_ioctls
        for bad, exc in ((3 * PAGE, ArgumentError), (PAGE // 2, ArgumentError), (1 << 21, RangeError)):
            with pytest.raises(exc):
                vm.enable_dirty_ring(bad)
        assert machine(be).file(vm.fileno()).nr_ioctls == before + 1  # only the cap query
        vm.enable_dirty_ring(PAGE)
        with pytest.raises(StateError):
            vm.enable_dirty_ring(PAGE)
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        vm.create_vcpu()
        with pytest.raises(StateError):
            vm.enable_dirty_ring(PAGE)
    be2 = MockBackend()
    machine(be2).kvm_config.dirty_ring_max = 0          # a kernel without the cap
    with Kvm(backend=be2) as kvm, kvm.create_vm() as vm:
        with pytest.raises(UnsupportedError):
            vm.enable_dirty_ring(PAGE)
        with pytest.raises(StateError):
            vm.create_vcpu().dirty_ring


def test_dirty_ring_full_exits_until_harvested_and_reset(backend_name):
    """A 4 KiB ring holds 256 entries and the kernel keeps 64 in reserve: once 192 pages are
    published, KVM_RUN exits with KVM_EXIT_DIRTY_RING_FULL until userspace harvests and resets
    (the run that fills the ring still ends at its HLT)."""
    be = make_backend(backend_name)
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        if not kvm.check_extension(I.KVM_CAP_DIRTY_LOG_RING):
            pytest.skip("no KVM_CAP_DIRTY_LOG_RING on this kernel")
        vm.enable_dirty_ring(PAGE)
        code = GuestMemory.anonymous(0x10000, backend=be)
        data = GuestMemory.anonymous(0xC0000, backend=be)
        vm.add_memslot(code, 0)
        slot = vm.add_memslot(data, 0x40000, log_dirty=True)
        v = vm.create_vcpu()
        ring = v.dirty_ring
        prog = guestcode.write_pages([0x40000 + p * PAGE for p in range(192)])
        code.write(0x1000, prog)
        hlt = 0x1000 + len(prog) - 1
        v.setup_real_mode(0x1000)
        assert v.run() == I.KVM_EXIT_HLT
        v.setup_real_mode(hlt)
        assert v.run() == I.KVM_EXIT_DIRTY_RING_FULL
        got = ring.harvest()
        assert got.size == 192 and sorted(got["offset"].tolist()) == list(range(192))
        assert set(got["slot"].tolist()) == {slot.slot}
        assert v.run() == I.KVM_EXIT_DIRTY_RING_FULL   # harvested but not reset yet
        assert vm.reset_dirty_rings() == 192
        v.setup_real_mode(hlt)
        assert v.run() == I.KVM_EXIT_HLT
        vm.close()
        code.close()
        data.close()
