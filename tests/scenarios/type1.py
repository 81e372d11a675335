"""Container/group/type1 scenarios, identical on the mock and in the guest.

Each ``scenario_*`` function takes an :class:`~scenarios.Env` and asserts what the kernel did.
Run as a module, this file is the child process of :func:`scenario_memlock_enomem`
(``python -m scenarios.type1 memlock-child KIND BDF LIMIT``).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from pyvfio import ioctls
from pyvfio.errors import (BusyError, ExistsError, InvalidArgumentError, NoSpaceError,
                           OutOfMemoryError, RangeError)
from pyvfio.seam import Backend
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.uapi import ffi
from pyvfio.vfio import Container, Group, Type1Iommu

from . import CountingBackend, Env, assert_unmapped_write_faults, locked_vm, param_path

PAGE = 4096
MSI_WINDOW = 0xFEE00000


@contextmanager
def type1(backend: Backend, bdf: str) -> Iterator[tuple[Container, Group, Type1Iommu]]:
    """Container + the device's group + SET_IOMMU(type1v2), closed in order afterwards."""
    with Container(backend=backend) as c:
        g = c.attach(Group.from_bdf(bdf, backend=backend))
        iommu = c.set_iommu("TYPE1v2")
        assert isinstance(iommu, Type1Iommu)
        yield c, g, iommu


# ---------------------------------------------------------------------------------------------


def scenario_extensions_and_status(env: Env) -> None:
    """API version 0; type1 extensions; group viable; CONTAINER_SET after attach."""
    be = env.backend()
    with Container(backend=be) as c:
        assert c.api_version() == ioctls.VFIO_API_VERSION == 0
        ext = c.extensions()
        assert ext["TYPE1"] == 1 and ext["TYPE1v2"] == 1 and ext["UNMAP_ALL"] == 1
        assert ext["NOIOMMU"] == 0 and ext["SPAPR_TCE"] == 0
        assert ext["UPDATE_VADDR"] == 0 and ext["DMA_CC"] == 0  # no IOMMU set yet
        g = Group.from_bdf(env.bdf, backend=be)
        st = g.status()
        assert st.viable and not st.container_set
        c.attach(g)
        st = g.status()
        assert st.viable and st.container_set
        assert env.bdf in g.device_names()
        c.set_iommu("TYPE1v2")
        assert c.check_extension("UPDATE_VADDR") == 1  # now asked of the type1 instance
        assert c.check_extension("TYPE1v2") == 1


def scenario_state_machine(env: Env) -> None:
    """SET_IOMMU before any group → EINVAL; MAP_DMA before SET_IOMMU → EINVAL; SET_IOMMU twice
    → EINVAL; GET_DEVICE_FD before SET_IOMMU → EINVAL; unknown device → ENODEV; UNSET twice →
    EINVAL; a second open of the group → EBUSY naming this process."""
    be = env.backend()
    with Container(backend=be) as c:
        with pytest.raises(InvalidArgumentError) as ei:
            be.ioctl(c.fileno(), ioctls.VFIO_SET_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU)
        assert ei.value.errno == errno.EINVAL
        m = ffi.new("struct vfio_iommu_type1_dma_map *")
        m.argsz = ffi.sizeof(m[0])
        m.flags = 3
        with DmaBuffer(PAGE, hugepages=None) as buf:
            m.vaddr, m.iova, m.size = buf.addr, 0x100000, PAGE
            with pytest.raises(InvalidArgumentError):
                be.ioctl(c.fileno(), ioctls.VFIO_IOMMU_MAP_DMA, m)
        g = c.attach(Group.from_bdf(env.bdf, backend=be))
        with pytest.raises(BusyError) as busy:
            Group(g.number, backend=be)
        assert busy.value.hint and str(os.getpid()) in busy.value.hint
        with pytest.raises(InvalidArgumentError):
            g.get_device_fd(env.bdf)
        c.set_iommu("TYPE1v2")
        with pytest.raises(InvalidArgumentError):
            be.ioctl(c.fileno(), ioctls.VFIO_SET_IOMMU, ioctls.VFIO_TYPE1v2_IOMMU)
        with pytest.raises(OSError) as nodev:
            g.get_device_fd("0000:00:1f.7")
        assert nodev.value.errno == errno.ENODEV
        g.unset_container()
        assert not g.status().container_set
        with pytest.raises(InvalidArgumentError):
            be.ioctl(g.fileno(), ioctls.VFIO_GROUP_UNSET_CONTAINER, 0)
        g.close()


def scenario_get_info(env: Env) -> None:
    """GET_INFO: PGSIZES|CAPS, 4 KiB pages, IOVA ranges excluding the MSI window, DMA_AVAIL equal
    to dma_entry_limit, MIGRATION cap (4 KiB pages, 256 MiB max bitmap)."""
    be = env.backend()
    limit = int(open(param_path(be, "vfio_iommu_type1", "dma_entry_limit")).read())
    with type1(be, env.bdf) as (_c, _g, iommu):
        info = iommu.info()
        assert info.flags & ioctls.VFIO_IOMMU_INFO_PGSIZES and info.flags & ioctls.VFIO_IOMMU_INFO_CAPS
        assert info.iova_pgsizes & PAGE and info.min_pgsize == PAGE
        assert info.iova_ranges, "no IOVA ranges reported"
        assert info.iova_ranges[0].start == 0
        assert not any(r.contains(MSI_WINDOW) for r in info.iova_ranges), info.iova_ranges
        assert any(r.end == MSI_WINDOW - 1 for r in info.iova_ranges), info.iova_ranges
        assert all(a.end < b.start for a, b in zip(info.iova_ranges, info.iova_ranges[1:]))
        assert info.dma_avail == limit
        assert info.migration is not None
        assert info.migration.pgsize_bitmap & PAGE
        assert info.migration.max_dirty_bitmap_size == 0x10000000
        ids = [h.id for h in info.caps]
        assert sorted(ids) == [1, 2, 3], ids


def scenario_map_two_buffers(env: Env) -> None:
    """Two DmaBuffers mapped at allocator IOVAs; DMA_AVAIL drops by two; the cache returns the
    same mapping; unmapping gives DMA_AVAIL and locked memory back."""
    be = env.backend()
    base_locked = locked_vm(be)
    with type1(be, env.bdf) as (_c, _g, iommu):
        avail0 = iommu.info(refresh=True).dma_avail
        mapper = DmaMapper(iommu, limit=1 << 28)
        a, b = DmaBuffer(2 << 20), DmaBuffer(64 << 10, hugepages=None)
        ma, mb = mapper.map(a), mapper.map(b, write=False)
        assert mapper.map(a) is ma and len(mapper) == 2
        assert ma.iova + ma.size <= mb.iova or mb.iova + mb.size <= ma.iova
        assert max(ma.iova + ma.size, mb.iova + mb.size) <= 1 << 28
        assert iommu.info(refresh=True).dma_avail == avail0 - 2
        assert locked_vm(be) >= base_locked + (64 << 10)
        a.close()  # still mapped: Python access ends, the memory stays until unmapped
        assert a.closed and not a.released
        ma.unmap()
        assert a.released
        mb.unmap()
        assert iommu.info(refresh=True).dma_avail == avail0
        assert locked_vm(be) == base_locked
        b.close()


def scenario_overlap_eexist(env: Env) -> None:
    """A map overlapping a live mapping → EEXIST; nothing changes."""
    be = env.backend()
    with type1(be, env.bdf) as (_c, _g, iommu), DmaBuffer(4 * PAGE) as a, DmaBuffer(4 * PAGE) as b:
        m = iommu.map(a, 0x200000)
        avail = iommu.info(refresh=True).dma_avail
        with pytest.raises(ExistsError) as ei:
            iommu.map(b, 0x200000 + 2 * PAGE)
        assert ei.value.errno == errno.EEXIST and ei.value.op == "VFIO_IOMMU_MAP_DMA"
        with pytest.raises(ExistsError):
            iommu.map(b, 0x200000 - 2 * PAGE)
        assert iommu.info(refresh=True).dma_avail == avail
        assert b.mappings == ()
        m.unmap()


def scenario_reserved_iova_refused(env: Env) -> None:
    """Mapping the MSI window is refused by pyvfio before any syscall (RangeError); the kernel
    itself refuses it with EINVAL."""
    counting = CountingBackend(env.backend())
    with type1(counting, env.bdf) as (_c, _g, iommu), DmaBuffer(2 * PAGE, hugepages=None) as buf:
        iommu.info()
        before = list(counting.ops)
        for iova in (MSI_WINDOW, 0xFEEFF000, MSI_WINDOW - PAGE):  # inside, last page, straddling
            with pytest.raises(RangeError) as ei:
                iommu.map(buf, iova)
            assert "not inside the usable IOVA ranges" in str(ei.value)
        assert counting.ops == before, "a syscall was issued for a reserved IOVA"
        assert buf.mappings == ()
        with pytest.raises(InvalidArgumentError):
            iommu.map_dma(buf.addr, MSI_WINDOW, PAGE)


def scenario_type1_rules(env: Env) -> None:
    """Unaligned or zero size → EINVAL; v2 partial unmap → EINVAL; unmapping a range that holds
    no mapping → 0 bytes; one unmap covering two adjacent mappings removes both; UNMAP_ALL."""
    be = env.backend()
    with type1(be, env.bdf) as (_c, _g, iommu), DmaBuffer(8 * PAGE) as buf:
        for vaddr, iova, size in ((buf.addr, 0x300000, 0), (buf.addr, 0x300000, 100),
                                  (buf.addr, 0x300800, PAGE), (buf.addr + 1, 0x300000, PAGE)):
            with pytest.raises(InvalidArgumentError):
                iommu.map_dma(vaddr, iova, size)
        iommu.map_dma(buf.addr, 0x300000, 4 * PAGE)
        iommu.map_dma(buf.addr + 4 * PAGE, 0x304000, 4 * PAGE)
        with pytest.raises(InvalidArgumentError):
            iommu.unmap_dma(0x300000, PAGE)  # bisects the first mapping
        with pytest.raises(InvalidArgumentError):
            iommu.unmap_dma(0x302000, 4 * PAGE)  # bisects both
        assert iommu.unmap_dma(0x400000, PAGE) == 0
        assert iommu.unmap_dma(0x300000, 8 * PAGE) == 8 * PAGE
        iommu.map_dma(buf.addr, 0x300000, 4 * PAGE, 1)  # read-only
        iommu.map_dma(buf.addr, 0x500000, 4 * PAGE, 2)  # write-only
        with pytest.raises(InvalidArgumentError):
            iommu.unmap_dma(0x300000, 4 * PAGE, ioctls.VFIO_DMA_UNMAP_FLAG_ALL)  # ALL needs 0, 0
        assert iommu.unmap_dma(0, 0, ioctls.VFIO_DMA_UNMAP_FLAG_ALL) == 8 * PAGE
        assert iommu.unmap_dma(0, 0, ioctls.VFIO_DMA_UNMAP_FLAG_ALL) == 0


def scenario_type1_v1_unmap_rules(env: Env) -> None:
    """Type1 v1 (VFIO_TYPE1_IOMMU): an unmap starting inside a mapping removes nothing (size 0,
    no error); one covering a mapping's first IOVA removes the whole mapping, even if shorter."""
    be = env.backend()
    with Container(backend=be) as c, DmaBuffer(8 * PAGE) as buf:
        c.attach(Group.from_bdf(env.bdf, backend=be))
        iommu = c.set_iommu("TYPE1")
        assert isinstance(iommu, Type1Iommu) and not iommu.v2
        iommu.map_dma(buf.addr, 0x300000, 4 * PAGE)
        assert iommu.unmap_dma(0x301000, PAGE) == 0
        assert iommu.unmap_dma(0x300000, PAGE) == 4 * PAGE
        assert iommu.unmap_dma(0x300000, 4 * PAGE) == 0


def scenario_update_vaddr(env: Env) -> None:
    """VFIO_UPDATE_VADDR honours its contract (linux/vfio.h: the new vaddr addresses the same
    memory object). Supported (a legacy type1 container once the IOMMU is set): a memfd buffer
    mapped at a second address takes over; an anonymous buffer is refused before any syscall
    (the following invalidation would fail with EINVAL had the refusal invalidated the vaddr);
    edu's DMA lands in the pages pinned at map time, seen through both addresses; the first
    buffer stays pinned until the unmap. Unsupported (iommufd's compat container, the mock with
    the knob off): UnsupportedError, the mapping untouched."""
    from pyvfio.errors import ArgumentError, UnsupportedError

    be, opened, edu = _edu(env)
    iova = 0x600000
    with opened, DmaBuffer.from_memfd(PAGE, backend=be) as a, a.alias() as b, \
            DmaBuffer(PAGE, backend=be) as other:
        iommu = opened.iommu
        assert isinstance(iommu, Type1Iommu)
        m = iommu.map(a, iova)
        if iommu.container.check_extension("UPDATE_VADDR") <= 0:
            with pytest.raises(UnsupportedError) as ei:
                iommu.update_vaddr(m, b)
            assert "unmap and map again" in (ei.value.hint or "")
            assert m.buffer is a and m.vaddr == a.addr and m.held == ()
            m.unmap()
            return
        with pytest.raises(ArgumentError) as ei:
            iommu.update_vaddr(m, other)  # anonymous memory: another object
        assert "same memory object" in str(ei.value)
        assert m.buffer is a and other.mappings == ()
        iommu.update_vaddr(m, b)
        assert m.buffer is b and m.vaddr == b.addr and m.held == (a,)
        assert a.mappings == (m,) and b.mappings == (m,)
        pattern = bytes((i * 29 + 3) & 0xFF for i in range(EDU_DMA))
        other.write(0, pattern)
        ms = iommu.map(other, iova + 0x100000, write=False)
        edu.to_device(ms.iova, EDU_DMA)
        edu.from_device(iova, EDU_DMA)  # through the updated mapping
        assert a.read(0, EDU_DMA) == pattern and b.read(0, EDU_DMA) == pattern
        b.write(0, b"via b")  # and the device reads what the new address wrote
        edu.to_device(iova, 5)
        with DmaBuffer(PAGE, backend=be) as dst:
            md = iommu.map(dst, iova + 0x200000)
            edu.from_device(md.iova, 5)
            assert dst.read(0, 5) == b"via b"
            md.unmap()
        ms.unmap()
        a.close()  # deferred: the kernel still maps a's pages
        assert not a.released
        m.unmap()
        assert a.released and b.mappings == () and m.held == ()


def scenario_dma_entry_limit_enospc(env: Env, n: int = 4) -> None:
    """With dma_entry_limit lowered to ``n`` (read at SET_IOMMU), the (n+1)th map gives ENOSPC
    with a hint naming dma_entry_limit; the parameter is restored afterwards."""
    be = env.backend()
    path = param_path(be, "vfio_iommu_type1", "dma_entry_limit")
    with open(path) as f:
        saved = f.read().strip()
    try:
        with open(path, "w") as f:
            f.write(f"{n}\n")
        with type1(be, env.bdf) as (_c, _g, iommu), DmaBuffer((n + 1) * PAGE) as buf:
            assert iommu.info(refresh=True).dma_avail == n
            maps = [iommu.map(buf, 0x700000 + i * PAGE, size=PAGE, offset=i * PAGE) for i in range(n)]
            with pytest.raises(NoSpaceError) as ei:
                iommu.map(buf, 0x700000 + n * PAGE, size=PAGE, offset=n * PAGE)
            e = ei.value
            assert e.errno == errno.ENOSPC and e.op == "VFIO_IOMMU_MAP_DMA"
            assert e.hint and "dma_entry_limit" in e.hint and f"({n})" in e.hint, e.hint
            assert iommu.info(refresh=True).dma_avail == 0
            maps[0].unmap()
            iommu.map(buf, 0x700000 + n * PAGE, size=PAGE, offset=n * PAGE)
    finally:
        with open(path, "w") as f:
            f.write(f"{saved}\n")
    with open(path) as f:
        assert f.read().strip() == saved


def scenario_memlock_enomem(env: Env) -> dict[str, Any]:
    """In a child without CAP_IPC_LOCK and with RLIMIT_MEMLOCK lowered, a map within the limit
    works, a larger one fails with ENOMEM (hint names RLIMIT_MEMLOCK and the amounts), and the
    locked memory returns to its baseline."""
    cmd = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
           sys.executable, "-m", "scenarios.type1", "memlock-child", env.kind, env.bdf]
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.dirname(tests_dir)
    envvars = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, repo, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=envvars, timeout=300)
    assert out.returncode == 0, f"child failed ({out.returncode}): {out.stderr[-3000:]}"
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["cap_ipc_lock"] is False
    assert res["small_ok"] is True
    assert res["errno"] == errno.ENOMEM, res
    assert "RLIMIT_MEMLOCK" in res["hint"] and str(res["big"]) in res["hint"], res["hint"]
    assert res["locked_during"] >= res["baseline"] + res["small"], res
    assert res["locked_after_fail"] == res["locked_during"], res
    assert res["locked_after"] == res["baseline"], res
    return res


def _memlock_child(kind: str, bdf: str) -> dict[str, Any]:
    from pyvfio.seam import get_backend
    from pyvfio.seam.mock import MockBackend

    be: Backend = MockBackend() if kind == "mock" else get_backend("real")
    cap = bool(int(next(l for l in open("/proc/self/status") if l.startswith("CapEff:")).split()[1], 16)
               & (1 << 14))
    baseline = locked_vm(be)
    small, big = 256 << 10, 4 << 20
    limit = (baseline + (1 << 20)) // PAGE * PAGE
    _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, hard if hard == resource.RLIM_INFINITY or hard >= limit else limit))
    res: dict[str, Any] = {"cap_ipc_lock": cap, "baseline": baseline, "limit": limit,
                           "small": small, "big": big, "errno": None, "hint": ""}
    with type1(be, bdf) as (_c, _g, iommu), DmaBuffer(small, hugepages=None) as s, \
            DmaBuffer(big, hugepages=None) as b:
        m = iommu.map(s, 0x100000)
        res["small_ok"] = True
        res["locked_during"] = locked_vm(be)
        try:
            iommu.map(b, 0x1000000)
        except OutOfMemoryError as e:
            res["errno"], res["hint"] = e.errno, e.hint or ""
        except OSError as e:
            res["errno"], res["hint"] = e.errno, str(e)
        res["locked_after_fail"] = locked_vm(be)
        m.unmap()
    res["locked_after"] = locked_vm(be)
    return res


def _edu(env: Env):
    from pyvfio.vfio import open_device
    from pyvfio.vfio.edu import EduDevice

    be = env.backend()
    opened = open_device(env.bdf, backend=be)
    try:
        edu = EduDevice(opened.device)
        edu.enable_bus_master()
    except BaseException:
        opened.close()
        raise
    return be, opened, edu


EDU_DMA = 4095  # QEMU 7.2's edu aborts on a full 4096-byte transfer


def scenario_dma_round_trip(env: Env) -> None:
    """Map two DmaBuffers, DMA a pattern RAM → edu → RAM through the IOMMU, compare the bytes."""
    be, opened, edu = _edu(env)
    with opened:
        mapper = DmaMapper(opened.iommu, limit=edu.dma_mask + 1)
        src, dst = DmaBuffer(PAGE), DmaBuffer(PAGE)
        pattern = bytes((i * 37 + 11) & 0xFF for i in range(EDU_DMA))
        src.write(0, pattern)
        dst.fill(0xEE)
        ms = mapper.map(src, write=False)  # the device only reads it
        md = mapper.map(dst, read=False)  # the device only writes it
        edu.to_device(ms.iova, EDU_DMA)
        edu.from_device(md.iova, EDU_DMA)
        assert dst.read(0, EDU_DMA) == pattern
        assert dst.read(EDU_DMA, 1) == b"\xee"
        src.close()
        dst.close()


def scenario_unmapped_write_does_not_land(env: Env) -> None:
    """After unmapping, an edu write to that IOVA does not reach the memory and the IOMMU logs a
    fault naming the address."""
    be, opened, edu = _edu(env)
    with opened:
        mapper = DmaMapper(opened.iommu, limit=edu.dma_mask + 1)
        src, dst = DmaBuffer(PAGE), DmaBuffer(PAGE)
        src.write(0, b"\x5a" * EDU_DMA)
        ms, md = mapper.map(src, write=False), mapper.map(dst)
        edu.to_device(ms.iova, EDU_DMA)  # the device buffer now holds 0x5a...
        edu.from_device(md.iova, 64)
        assert dst.read(0, 64) == b"\x5a" * 64  # mapped: the write lands
        dst.fill(0)
        iova = md.iova
        md.unmap()
        assert_unmapped_write_faults(env, be, edu, iova, dst)
        # a read-only mapping refuses device writes too
        mr = opened.iommu.map(dst, iova, write=False)
        edu.from_device(iova, 64)
        assert dst.read(0, 64) == bytes(64)
        mr.unmap()
        src.close()
        dst.close()


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = int(value.split()[0])
    return out


def scenario_hugetlbfs_buffer(env: Env) -> None:
    """A hugetlbfs DmaBuffer (MAP_HUGETLB, 2 MiB pages) is really backed by hugetlbfs pages
    (``backing()``: smaps' KernelPageSize 2048 kB) and maps as one mapping at a 2 MiB-aligned
    IOVA, picked so by DmaMapper. Where 2 MiB pages are reserved this path must succeed: the
    guests reserve 32 at boot (vm/guest.py HUGEPAGES_2M), so a real kernel without them fails
    the scenario. Only with none reserved (the mock on a host without them) does the allocation
    fail, with ENOMEM and a hint naming nr_hugepages."""
    be = env.backend()
    info = _meminfo()
    if info.get("Hugepagesize") != 2048:
        pytest.skip(f"the default huge page size is {info.get('Hugepagesize')} kB, not 2 MiB")
    if not env.is_mock:
        assert info.get("HugePages_Total", 0) > 0, "the test bed reserves 2 MiB pages at boot"
    if info.get("HugePages_Free", 0) == 0:
        assert env.is_mock, info
        with pytest.raises(OutOfMemoryError) as ei:
            DmaBuffer(2 << 20, hugepages="hugetlbfs")
        assert "nr_hugepages" in (ei.value.hint or "")
        return
    with type1(be, env.bdf) as (_c, _g, iommu), DmaBuffer(4096, hugepages="hugetlbfs") as buf:
        assert buf.size == 2 << 20 and buf.addr % (2 << 20) == 0
        backing = buf.backing()
        assert backing.kind == "hugetlbfs" and backing.page_size == 2 << 20, backing
        assert backing.huge and backing.largest_page == 2 << 20, backing
        m = iommu.map(buf, 0x40000000)
        assert m.size == 2 << 20
        buf.write((2 << 20) - 3, b"end")
        assert buf.read((2 << 20) - 3, 3) == b"end"
        m.unmap()
        mapper = DmaMapper(iommu)
        m = mapper.map(buf)
        assert m.iova % (2 << 20) == 0, hex(m.iova)  # the largest IOMMU page the buffer can use
        m.unmap()


ALL = [
    scenario_extensions_and_status,
    scenario_state_machine,
    scenario_get_info,
    scenario_map_two_buffers,
    scenario_overlap_eexist,
    scenario_reserved_iova_refused,
    scenario_type1_rules,
    scenario_type1_v1_unmap_rules,
    scenario_update_vaddr,
    scenario_dma_entry_limit_enospc,
    scenario_memlock_enomem,
    scenario_hugetlbfs_buffer,
    scenario_dma_round_trip,
    scenario_unmapped_write_does_not_land,
]

def type1_generation(env: Env) -> tuple[int, int]:
    """(major, minor) of the type1 driver the scenario meets: the guest's kernel release, or what
    the mock is told to model (``facts["kernel"]``, default 6.12)."""
    release = env.facts.get("guest", {}).get("kernel") or env.facts.get("kernel", "6.12")
    major, minor, *_ = (int(x) for x in release.split("-")[0].split("+")[0].split("."))
    return major, minor


def scenario_end_of_space(env: Env) -> None:
    """The last page below 2^64, where the IOMMU's ranges reach it (amd- and virtio-iommu; intel
    stops at 2^39). 6.x type1 maps it but cannot unmap it: iova + size wraps to 0, so neither
    UNMAP_DMA nor UNMAP_ALL finds it (0 bytes) and it stays mapped and pinned until the container
    closes; it refuses a map whose end overflows with EINVAL. 7.x unmaps it and refuses the
    overflow with EOVERFLOW (check_add_overflow). Seen on 6.12 in the amd and virtio guests too,
    not exercised here (the mock keeps one entry per IOVA): a second MAP_DMA of that
    still-mapped page succeeds, because the overlap lookup wraps the same way."""
    be = env.backend()
    last = (1 << 64) - PAGE
    v7 = type1_generation(env) >= (7, 0)
    with type1(be, env.bdf) as (_c, _g, iommu), DmaBuffer(2 * PAGE, hugepages=None, backend=be) as buf:
        ranges = iommu.info().iova_ranges
        assert any(r.start <= last and r.end == (1 << 64) - 1 for r in ranges), ranges
        iommu.map_dma(buf.addr, last, PAGE)
        n = iommu.unmap_dma(last, PAGE)
        assert n == (PAGE if v7 else 0), n
        # 6.x: UNMAP_ALL cannot reach it either (its lookup wraps the same way): the page stays
        # mapped and pinned until the container closes
        n = iommu.unmap_dma(0, 0, flags=ioctls.VFIO_DMA_UNMAP_FLAG_ALL)
        assert n == 0, n  # 7.x: already gone; 6.x: out of reach
        with pytest.raises(OSError) as ei:
            iommu.map_dma(buf.addr, last, 2 * PAGE)
        assert ei.value.errno == (errno.EOVERFLOW if v7 else errno.EINVAL), ei.value
        with pytest.raises(OSError) as ei:
            iommu.unmap_dma(last, 2 * PAGE)
        assert ei.value.errno == (errno.EOVERFLOW if v7 else errno.EINVAL), ei.value


#: The scenarios whose outcomes hold as written on iommufd's compat container too (/dev/vfio/vfio
#: served by iommufd: the bed's ``built`` kernel, IOMMUFD_VFIO_CONTAINER). The rest are the legacy
#: type1 driver's own rules and differ there (measured on 7.2: VFIO_CHECK_EXTENSION/SET_IOMMU
#: answer ENODEV for requests the compat layer does not emulate, there is no
#: vfio_iommu_type1.dma_entry_limit, type1 v1 unmap and reserved-IOVA errnos differ, and pins are
#: charged to the user, not to VmLck); their compat expectations belong with the compat
#: container's own scenarios.
COMPAT = [
    scenario_overlap_eexist,
    scenario_update_vaddr,
    scenario_hugetlbfs_buffer,
    scenario_dma_round_trip,
    scenario_unmapped_write_does_not_land,
]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "memlock-child":
        print(json.dumps(_memlock_child(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} memlock-child mock|real BDF")
