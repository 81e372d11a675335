"""pyvfio.core.memory.HostMemory: one owner of host mappings, unmapped once, under DmaBuffer and GuestMemory."""

from __future__ import annotations

import errno
import gc
import mmap
import os

import numpy as np
import pytest

from pyvfio.core.fd import Closeable
from pyvfio.core.memory import HostMemory
from pyvfio.errors import ArgumentError, RangeError
from pyvfio.kvm import GuestMemory
from pyvfio.seam.mock import MockBackend
from pyvfio.services.dma import DmaBuffer

PAGE = mmap.PAGESIZE
RW = mmap.PROT_READ | mmap.PROT_WRITE
ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


class Counting(MockBackend):
    """A mock backend that records every munmap."""

    def __init__(self) -> None:
        super().__init__()
        self.unmapped: list[tuple[int, int]] = []

    def munmap(self, addr: int, length: int) -> None:
        self.unmapped.append((addr, length))
        super().munmap(addr, length)


def test_close_unmaps_once_and_is_a_context_manager():
    be = Counting()
    addr = be.mmap(2 * PAGE, RW, ANON)
    with HostMemory(addr, 2 * PAGE, backend=be) as m:
        assert isinstance(m, Closeable) and not m.closed and m.owned
    assert m.closed and m.released and be.unmapped == [(addr, 2 * PAGE)]
    m.close()
    assert be.unmapped == [(addr, 2 * PAGE)]


def test_dropped_memory_is_unmapped_by_the_finalizer():
    be = Counting()
    addr = be.mmap(PAGE, RW, ANON)
    m = HostMemory(addr, PAGE, backend=be)
    del m
    gc.collect()
    assert be.unmapped == [(addr, PAGE)]


def test_borrowed_memory_is_never_unmapped():
    be = Counting()
    addr = be.mmap(PAGE, RW, ANON)
    m = HostMemory(addr, PAGE, backend=be, owned=False)
    m.close()
    assert m.closed and not m.owned and be.unmapped == []
    del m
    gc.collect()
    assert be.unmapped == []
    be.munmap(addr, PAGE)


def test_memfd_is_closed_with_the_mapping():
    be = Counting()
    fd = os.memfd_create("pyvfio-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    addr = be.mmap(PAGE, RW, mmap.MAP_SHARED, fd, 0)
    HostMemory(addr, PAGE, backend=be, fd=fd).close()
    with pytest.raises(OSError) as ei:
        os.fstat(fd)
    assert ei.value.errno == errno.EBADF


def test_dmabuffer_and_guestmemory_share_the_owner():
    be = Counting()
    buf = DmaBuffer(PAGE, hugepages=None, backend=be)
    mem = GuestMemory.anonymous(PAGE, backend=be)
    assert isinstance(buf, HostMemory) and isinstance(mem, HostMemory)
    a, b = buf.addr, mem.addr
    buf.close()
    mem.close()
    buf.close()
    mem.close()
    assert sorted(be.unmapped) == sorted([(a, PAGE), (b, PAGE)])


def test_dropped_guest_memory_is_unmapped_without_del():
    be = Counting()
    mem = GuestMemory.memfd(PAGE, backend=be)
    addr, fd = mem.addr, mem.fd
    assert not hasattr(GuestMemory, "__del__")
    del mem
    gc.collect()
    assert be.unmapped == [(addr, PAGE)]
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("bad, error", [(300, RangeError), (-1, RangeError), (256, RangeError),
                                        (1.0, ArgumentError), (None, ArgumentError),
                                        (True, ArgumentError)])
def test_fill_refuses_a_value_that_is_not_one_byte(bad: object, error: type) -> None:
    # memset keeps the low 8 bits: fill(300) used to write 0x2c, fill(-1) 0xff
    with DmaBuffer(PAGE, hugepages=None, backend=MockBackend()) as buf:
        buf.fill(0x5a)
        with pytest.raises(error):
            buf.fill(bad)  # type: ignore[arg-type]
        assert buf.read(0, PAGE) == b"\x5a" * PAGE


def test_fill_takes_numpy_integers() -> None:
    with DmaBuffer(PAGE, hugepages=None, backend=MockBackend()) as buf:
        buf.fill(np.uint8(0xa5))
        assert buf.read(0, PAGE) == b"\xa5" * PAGE
