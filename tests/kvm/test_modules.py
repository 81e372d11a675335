"""Where the KVM objects live (system, vm, memslot) and that the package still exports them."""

from __future__ import annotations

import pytest

import pyvfio
from pyvfio import kvm
from pyvfio.errors import AlignmentError, RangeError
from pyvfio.kvm import memslot, system, vm


def test_kvm_vm_memslot_live_in_their_modules():
    assert kvm.Kvm is system.Kvm and kvm.Vm is vm.Vm and kvm.MemSlot is memslot.MemSlot
    assert kvm.MemFlag is memslot.MemFlag and kvm.GuestMemfd is vm.GuestMemfd
    assert (pyvfio.Kvm, pyvfio.Vm, pyvfio.MemSlot) == (kvm.Kvm, kvm.Vm, kvm.MemSlot)


def test_slot_checks_are_module_functions():
    with pytest.raises(AlignmentError):
        memslot.check_range(1, memslot.PAGE_SIZE, 0)
    with pytest.raises(RangeError):
        memslot.check_gpa_limit(1 << memslot.MAX_GPA_BITS, memslot.PAGE_SIZE)
    memslot.check_range(0, memslot.PAGE_SIZE, memslot.PAGE_SIZE)
