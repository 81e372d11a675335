"""VFIO_DMA_MAP_FLAG_VADDR's contract (issue 12, A): the new vaddr must address the same memory
object; the kernel keeps DMA on the pages it pinned at map time, so pyvfio refuses any other
memory before the syscall and keeps the old buffer pinned until the mapping goes, and the mock
keeps translating to the pinned pages like the kernel.

The guest twins (tests/vfio/test_vaddr_contract_guest.py) run the same contract on real kernels.
"""

from __future__ import annotations

import errno
import mmap
import os

import pytest
from scenarios import CountingBackend
from scenarios import type1 as sc

from pyvfio import ioctls
from pyvfio.core.memory import memory_object_mismatch
from pyvfio.errors import ArgumentError, InvalidArgumentError, StateError, UnsupportedError
from pyvfio.mockkernel.vfio.type1 import Type1Iommu as MockType1
from pyvfio.services.dma import DmaBuffer
from pyvfio.testing import machine

PAGE = 4096
IOVA = 0x100000
DMA_OPS = ("VFIO_IOMMU_MAP_DMA", "VFIO_IOMMU_UNMAP_DMA")


def _mock_entry(iommu, iova=IOVA):
    """The mock kernel's DmaEntry behind a pyvfio Type1Iommu."""
    return iommu.backend.kernel.fget(iommu.container.fileno()).iommu._find(iova)


def _dma_ops(ops):
    return [op for op in ops if op in DMA_OPS]


@pytest.mark.parametrize("what", ["anonymous", "other memfd", "other offset", "private mapping"])
def test_other_memory_is_refused_before_any_syscall(be, what):
    counting = CountingBackend(be)
    with sc.type1(counting, "0000:00:03.0") as (_c, _g, iommu), \
            DmaBuffer.from_memfd(2 * PAGE, backend=be) as a:
        m = iommu.map(a, IOVA, size=PAGE)
        cleanup = []
        if what == "anonymous":
            new = DmaBuffer(PAGE, backend=be)
        elif what == "other memfd":
            new = DmaBuffer.from_memfd(PAGE, backend=be)
        elif what == "other offset":  # the same memfd, its second page
            new = DmaBuffer.from_fd(a.fd, PAGE, offset=PAGE, backend=be)
        else:  # the same memfd and offset, but MAP_PRIVATE: copy-on-write pages of its own
            new = be.mmap(PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, a.fd, 0)
            cleanup.append(lambda: be.munmap(new, PAGE))
        before = list(counting.ops)
        with pytest.raises(ArgumentError) as ei:
            iommu.update_vaddr(m, new)
        assert "same memory object" in str(ei.value), ei.value
        assert counting.ops[len(before):] == ["VFIO_CHECK_EXTENSION"]  # no DMA ioctl
        assert m.buffer is a and m.vaddr == a.addr and m.held == ()
        assert not _mock_entry(iommu).vaddr_invalid
        if not isinstance(new, int):
            assert new.mappings == ()
            new.close()
        for fn in cleanup:
            fn()
        m.unmap()


def test_same_memory_through_a_second_mapping_is_accepted_and_the_old_pin_kept(be):
    counting = CountingBackend(be)
    with sc.type1(counting, "0000:00:03.0") as (_c, _g, iommu), \
            DmaBuffer.from_memfd(PAGE, backend=be) as a:
        b, c = a.alias(), a.alias()
        m = iommu.map(a, IOVA)
        n = len(counting.ops)
        iommu.update_vaddr(m, b)
        assert _dma_ops(counting.ops[n:]) == ["VFIO_IOMMU_UNMAP_DMA", "VFIO_IOMMU_MAP_DMA"]
        assert m.buffer is b and m.vaddr == b.addr and m.held == (a,)
        iommu.update_vaddr(m, c)  # twice: both earlier buffers stay pinned
        assert m.held == (a, b) and a.mappings == b.mappings == c.mappings == (m,)
        e = _mock_entry(iommu)
        assert e.vaddr == c.addr and e.pinned_vaddr == a.addr and not e.vaddr_invalid
        a.close()
        b.close()  # deferred: the IOMMU still maps their pages
        assert not a.released and not b.released
        m.unmap()
        assert a.released and b.released and c.mappings == () and m.held == ()
        c.close()


def test_update_to_the_mapped_buffer_itself_is_a_no_op_address(be):
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(PAGE, backend=be) as a:
        m = iommu.map(a, IOVA)
        iommu.update_vaddr(m, a)  # anonymous, but the very memory already mapped
        assert m.buffer is a and m.vaddr == a.addr
        m.unmap()
        assert a.mappings == ()


def test_dead_mapping_and_closed_buffer(be):
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), \
            DmaBuffer.from_memfd(PAGE, backend=be) as a:
        b = a.alias()
        m = iommu.map(a, IOVA)
        b.close()
        with pytest.raises(StateError):
            iommu.update_vaddr(m, b)
        assert not _mock_entry(iommu).vaddr_invalid
        m.unmap()
        with pytest.raises(StateError):
            iommu.update_vaddr(m, a)


def test_failed_map_vaddr_gives_the_kernel_its_old_vaddr_back(be, monkeypatch):
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), \
            DmaBuffer.from_memfd(PAGE, backend=be) as a, a.alias() as b:
        m = iommu.map(a, IOVA)
        real = iommu.map_dma
        calls = []

        def flaky(vaddr, iova, size, flags=3):
            calls.append(vaddr)
            if flags == ioctls.VFIO_DMA_MAP_FLAG_VADDR and vaddr == b.addr:
                raise InvalidArgumentError(errno.EINVAL, "injected", op="VFIO_IOMMU_MAP_DMA")
            return real(vaddr, iova, size, flags)

        monkeypatch.setattr(iommu, "map_dma", flaky)
        with pytest.raises(InvalidArgumentError):
            iommu.update_vaddr(m, b)
        assert calls == [b.addr, a.addr]
        e = _mock_entry(iommu)
        assert not e.vaddr_invalid and e.vaddr == a.addr
        assert m.buffer is a and b.mappings == () and a.mappings == (m,)
        m.unmap()


def test_unsupported_says_so_before_the_dma_ioctls(be, monkeypatch):
    monkeypatch.setattr(MockType1, "update_vaddr_supported", False)
    counting = CountingBackend(be)
    with sc.type1(counting, "0000:00:03.0") as (c, _g, iommu), \
            DmaBuffer.from_memfd(PAGE, backend=be) as a, a.alias() as b:
        assert c.check_extension("UPDATE_VADDR") == 0
        m = iommu.map(a, IOVA)
        n = len(counting.ops)
        with pytest.raises(UnsupportedError) as ei:
            iommu.update_vaddr(m, b)
        assert "VFIO_UPDATE_VADDR" in str(ei.value) and "compat" in ei.value.hint
        assert counting.ops[n:] == ["VFIO_CHECK_EXTENSION"]
        m.unmap()


# -- the mock kernel: DMA stays on the pinned pages, like the kernel's -------------------------------


def test_mock_dma_reaches_the_pages_pinned_at_map_time(be):
    """A raw MAP_DMA VADDR with unrelated memory (what the kernel cannot check): the kernel
    keeps its pinned pages, so device DMA still lands in the first buffer, also while the vaddr
    is invalid between the two ioctls."""
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(PAGE, backend=be) as a, \
            DmaBuffer(PAGE, backend=be) as other:
        mgroup = machine(be).group(3).vfio
        iommu.map_dma(a.addr, IOVA, PAGE)
        assert iommu.unmap_dma(IOVA, PAGE, ioctls.VFIO_DMA_UNMAP_FLAG_VADDR) == PAGE
        mgroup.dma_write(IOVA, b"during")  # the IOMMU page table is untouched
        assert a.read(0, 6) == b"during"
        iommu.map_dma(other.addr, IOVA, PAGE, ioctls.VFIO_DMA_MAP_FLAG_VADDR)
        mgroup.dma_write(IOVA, b"after!")
        assert a.read(0, 6) == b"after!" and other.read(0, 6) == bytes(6)
        a.write(8, b"cpu")
        assert mgroup.dma_read(IOVA + 8, 3) == b"cpu"
        assert iommu.unmap_dma(IOVA, PAGE) == PAGE


def test_mock_vaddr_rules(be):
    with sc.type1(be, "0000:00:03.0") as (_c, _g, iommu), DmaBuffer(2 * PAGE, backend=be) as a:
        iommu.map_dma(a.addr, IOVA, PAGE)
        with pytest.raises(InvalidArgumentError):  # not invalidated first
            iommu.map_dma(a.addr, IOVA, PAGE, ioctls.VFIO_DMA_MAP_FLAG_VADDR)
        iommu.unmap_dma(IOVA, PAGE, ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        with pytest.raises(InvalidArgumentError):  # twice
            iommu.unmap_dma(IOVA, PAGE, ioctls.VFIO_DMA_UNMAP_FLAG_VADDR)
        iommu.map_dma(a.addr + PAGE, IOVA, PAGE, ioctls.VFIO_DMA_MAP_FLAG_VADDR)
        assert iommu.unmap_dma(IOVA, PAGE) == PAGE


# -- the memory-object check and the memfd buffers ---------------------------------------------------


def test_memory_object_mismatch(be):
    with DmaBuffer.from_memfd(2 * PAGE, backend=be) as a, a.alias() as b, \
            DmaBuffer(PAGE, hugepages=None, backend=be) as anon:
        assert memory_object_mismatch(be, a.addr, b.addr, 2 * PAGE) is None
        assert "offset" in memory_object_mismatch(be, a.addr, b.addr + PAGE, PAGE)
        assert "private or anonymous" in memory_object_mismatch(be, anon.addr, a.addr, PAGE)
        assert "not a shared mapping" in memory_object_mismatch(be, a.addr, anon.addr, PAGE)
        gone = be.mmap(PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        be.munmap(gone, PAGE)
        assert "not (fully) mapped" in memory_object_mismatch(be, a.addr, gone, PAGE)


def test_memfd_buffers_share_memory_and_close_their_fds(be, no_fd_leak):
    a = DmaBuffer.from_memfd(5000, backend=be)
    assert a.size == 2 * PAGE and a.shared and a.fd >= 0 and a.file_offset == 0
    b = a.alias()
    assert b.fd != a.fd and b.addr != a.addr and b.shared
    a.write(100, b"both")
    assert b.read(100, 4) == b"both"
    b.view[0:2] = b"hi"
    assert a.read(0, 2) == b"hi"
    assert "memfd" in repr(a)
    a.close()
    assert b.read(100, 4) == b"both"  # the memory lives while a mapping of it does
    b.close()
    with pytest.raises(ArgumentError):
        DmaBuffer(PAGE, backend=be).alias()  # anonymous: no second address


def test_from_fd_keeps_the_callers_fd(be, no_fd_leak):
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    with DmaBuffer.from_fd(fd, PAGE, offset=PAGE, backend=be) as buf:
        buf.write(0, b"second page")
        assert os.pread(fd, 11, PAGE) == b"second page"
        assert buf.file_offset == PAGE
    os.fstat(fd)  # still ours
    os.close(fd)
    with pytest.raises(Exception):
        DmaBuffer.from_fd(-1, PAGE, backend=be)
