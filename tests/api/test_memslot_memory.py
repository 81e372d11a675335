"""Issue 12, item 3: memslot host memory comes from a memory object or an explicit ``hva=``; a
plain int where the memory goes is refused (it reads as a size: ``add_memslot(64 * MiB, 0, 4096)``)."""

from __future__ import annotations

import pytest

from pyvfio.errors import ArgumentError
from pyvfio.kvm import GuestMemory, Kvm
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer

MiB = 1 << 20


@pytest.fixture
def vm():
    be = MockBackend()
    with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
        yield vm


def test_plain_int_memory_is_refused(vm) -> None:
    with pytest.raises(ArgumentError, match="plain int is not host memory.*hva="):
        vm.add_memslot(64 * MiB, 0, 4096)
    assert vm.memslots == []


def test_explicit_hva(vm) -> None:
    mem = GuestMemory.anonymous(MiB, backend=vm.backend)
    s = vm.add_memslot(gpa=0, size=MiB, hva=mem.addr)
    assert (s.hva, s.size, s.memory) == (mem.addr, MiB, None)
    with pytest.raises(ArgumentError, match="not both"):
        vm.add_memslot(mem, 2 * MiB, hva=mem.addr)
    s.delete()
    mem.close()


def test_buffer_object_is_kept_and_pinned(vm) -> None:
    buf = DmaBuffer(2 * MiB)
    s = vm.add_memslot(buf, 0x100000, log_dirty=True)
    assert s.hva == buf.addr and s.size == 2 * MiB
    assert len(buf.mappings) == 1  # pinned by the slot
    buf.close()  # deferred: the slot still maps it
    assert not buf._gone[0]
    s.delete()
    assert buf.mappings == () and buf._gone[0]  # returned with the last user
