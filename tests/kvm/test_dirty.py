"""Dirty logs made by a running vCPU: exactly the written pages, on real /dev/kvm and the mock.

The guest (pyvfio.kvm.guestcode, real mode) stores one byte in each chosen page of a
dirty-logged data slot; its code lives in a separate slot without logging.
"""

from __future__ import annotations

import numpy as np
import pytest
from scenarios.kvm import DATA_PAGES, Guest, mock_ioctls

from pyvfio import ioctls as I
from pyvfio.errors import AlignmentError, ArgumentError, RangeError
from pyvfio.core.bitmap import DirtyBitmap
from pyvfio.kvm import GuestMemory, guestcode

pytestmark = pytest.mark.backends("mock", "kvm")

PAGE_SETS = [
    [0],
    [DATA_PAGES - 1],
    [0, 1, 2, 63, 64, 65, 127, 128, DATA_PAGES - 1],
    list(range(0, DATA_PAGES, 3)),
    sorted(np.random.default_rng(5).choice(DATA_PAGES, 40, replace=False).tolist()),
]


@pytest.fixture
def guest(vm):
    g = Guest(vm)
    yield g
    g.close()


@pytest.mark.parametrize("pages", PAGE_SETS, ids=lambda p: f"{len(p)}pages")
def test_get_dirty_log_reports_exactly_the_written_pages(guest, pages):
    assert guest.slot.get_dirty_log().count() == 0  # nothing written yet
    guest.write_pages(pages)
    bm = guest.slot.get_dirty_log()
    assert bm.pages().tolist() == pages
    assert bm.base == guest.slot.gpa
    assert bm.addresses().tolist() == [guest.slot.gpa + p * 4096 for p in pages]
    # without manual protect GET cleared the log: the next one is empty
    assert guest.slot.get_dirty_log().count() == 0
    # the code slot has no logging; asking for its log is refused before the syscall
    before = mock_ioctls(guest.vm)
    with pytest.raises(ArgumentError):
        guest.code_slot.get_dirty_log()
    assert mock_ioctls(guest.vm) == before


def test_writes_after_a_get_are_reported_by_the_next(guest):
    guest.write_pages([3, 4, 5])
    assert guest.slot.get_dirty_log().pages().tolist() == [3, 4, 5]
    guest.write_pages([5, 100])
    assert guest.slot.get_dirty_log().pages().tolist() == [5, 100]


def test_manual_protect_pages_stay_dirty_until_cleared(vm):
    vm.enable_manual_dirty_log_protect()
    g = Guest(vm)
    try:
        written = [0, 1, 10, 63, 64, 70, 130, 150, DATA_PAGES - 1]
        g.write_pages(written)
        s = g.slot
        assert s.get_dirty_log().pages().tolist() == written
        assert s.get_dirty_log().pages().tolist() == written   # GET does not clear
        # clear pages 0 and 10 of the first window and the whole third window (tail, 56 pages)
        mask = DirtyBitmap.from_pages(64, [0, 10, 20])          # 20 was never dirty
        s.clear_dirty_log(mask, first_page=0, num_pages=64)
        s.clear_dirty_log(None, first_page=128, num_pages=DATA_PAGES - 128)
        assert s.get_dirty_log().pages().tolist() == [1, 63, 64, 70]
        # a cleared page written again is dirty again; uncleared pages stay dirty
        g.write_pages([0, 150])
        assert s.get_dirty_log().pages().tolist() == [0, 1, 63, 64, 70, 150]
        # the 64-page alignment rules are checked before the syscall
        before = mock_ioctls(vm)
        with pytest.raises(AlignmentError):
            s.clear_dirty_log(None, first_page=32, num_pages=64)
        with pytest.raises(AlignmentError):
            s.clear_dirty_log(None, first_page=0, num_pages=10)
        with pytest.raises(RangeError):
            s.clear_dirty_log(None, first_page=128, num_pages=64)
        assert mock_ioctls(vm) == before
        # fetch_dirty = GET + CLEAR of exactly what was reported
        assert s.fetch_dirty().pages().tolist() == [0, 1, 63, 64, 70, 150]
        assert s.get_dirty_log().count() == 0
    finally:
        g.close()


def test_manual_protect_initially_set(vm):
    vm.enable_manual_dirty_log_protect(initially_set=True)
    g = Guest(vm)
    try:
        s = g.slot
        assert s.get_dirty_log().count() == DATA_PAGES          # everything starts dirty
        s.clear_dirty_log()                                     # whole slot
        assert s.get_dirty_log().count() == 0
        g.write_pages([7, 77, 177])
        assert s.get_dirty_log().pages().tolist() == [7, 77, 177]
    finally:
        g.close()


def test_dirty_logging_toggle_and_move(vm):
    g = Guest(vm, log_dirty=False)
    try:
        s = g.slot
        g.write_pages([1, 2])
        s.set_dirty_logging(True)                               # flags-only change
        assert s.log_dirty and s.get_dirty_log().count() == 0  # earlier writes are not logged
        g.write_pages([9])
        assert s.get_dirty_log().pages().tolist() == [9]
        s.set_dirty_logging(False)
        with pytest.raises(ArgumentError):
            s.get_dirty_log()
        # move the data slot; the guest now reaches it at the new gpa
        s.set_dirty_logging(True)
        s.move(0x100000 - s.size)
        g.write_pages([4, 5])
        assert s.get_dirty_log().pages().tolist() == [4, 5]
    finally:
        g.close()


def test_dirty_ring_harvest_and_reset(kvm):
    if not kvm.check_extension(I.KVM_CAP_DIRTY_LOG_RING):
        pytest.skip("no KVM_CAP_DIRTY_LOG_RING on this kernel (mock-tested only)")
    with kvm.create_vm() as vm:
        vm.enable_dirty_ring(4096 * 4)                          # 1024 entries
        g = Guest(vm)
        try:
            ring = g.vcpu.dirty_ring
            assert ring.nentries == 1024
            written = [2, 3, 64, 100, 183]
            g.write_pages(written)
            got = ring.harvest()
            assert set(got["slot"].tolist()) == {g.slot.slot}
            assert sorted(got["offset"].tolist()) == written
            assert ring.harvest().size == 0                     # nothing new
            # Not reset yet: the kernel may publish a page again (the real 6.18 host does after
            # the vCPU's registers are reloaded, which rebuilds its shadow MMU); never others.
            g.write_pages(written)
            again = ring.harvest()
            assert set(again["offset"].tolist()) <= set(written)
            assert vm.reset_dirty_rings() == len(written) + again.size
            g.write_pages([3, 50])
            assert sorted(ring.harvest()["offset"].tolist()) == [3, 50]
            assert vm.reset_dirty_rings() == 2
            with pytest.raises(ArgumentError):
                g.slot.get_dirty_log()                          # the ring replaces the bitmap
        finally:
            g.close()


def test_small_slot_first_instruction_stores_to_the_next_page(kvm):
    """The layout of the one dirty-log miss seen once in an early C probe on this host: a
    4-page slot holding the code in page 0, whose first instruction stores to page 1. Repeated
    on fresh VMs; every log must be exactly [1] (pyvfio never reproduced the miss)."""
    for _ in range(20):
        with kvm.create_vm() as vm:
            mem = GuestMemory.anonymous(4 * 4096, backend=kvm.backend)
            s = vm.add_memslot(mem, 0, log_dirty=True)
            mem.write(0, guestcode.write_pages([4096 + 0x10]))
            v = vm.create_vcpu()
            v.setup_real_mode(0)
            v.run_until_halt()
            assert s.get_dirty_log().pages().tolist() == [1]
            assert mem.read(4096 + 0x10, 1) == b"\xa5"
        mem.close()
