"""iommufd scenarios (/dev/iommu, IOAS, HWPT, the VFIO device cdev), identical on the mock and
in the QEMU guest booted with the iommufd kernel (vm/build_kernel.py).

Each ``scenario_*`` takes an :class:`~scenarios.Env` and asserts what the kernel did: errnos,
IOVAs, DMA bytes moved by edu, pinned and locked memory. Run as a module, this file is the child
of :func:`scenario_memlock_enomem` (``python -m scenarios.iommufd memlock-child KIND BDF MODE``).
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
from pyvfio.errors import (BusyError, ExistsError, InvalidArgumentError, NotFoundError,
                           OutOfMemoryError, PermissionDeniedError, PyvfioError, RangeError,
                           UnsupportedError)
from pyvfio.iommufd import HwInfoType, IommuFd, cdev_path, open_device
from pyvfio.seam import Backend
from pyvfio.services.dma import DmaBuffer, DmaMapper
from pyvfio.uapi import ffi
from pyvfio.vfio import Group
from pyvfio.testing import machine

from . import CountingBackend, Env, assert_unmapped_write_faults, locked_vm

PAGE = 4096
MSI_WINDOW = 0xFEE00000
U64_MAX = (1 << 64) - 1
EDU_DMA = 4095  # QEMU 7.2's edu aborts on a full 4096-byte transfer


CAP_IPC_LOCK, CAP_SYS_RESOURCE = 14, 24


def has_cap(bit: int) -> bool:
    with open("/proc/self/status") as f:
        eff = int(next(l for l in f if l.startswith("CapEff:")).split()[1], 16)
    return bool(eff & (1 << bit))


def thp(env: Env) -> bool:
    """The kernel has CONFIG_TRANSPARENT_HUGEPAGE: iopt_alloc_iova then keeps a buffer's
    alignment up to 2 MiB (else one page) when it picks an IOVA."""
    if env.is_mock:
        return bool(machine(env.backend()).iommufd.thp)  # type: ignore[attr-defined]
    return os.path.isdir("/sys/kernel/mm/transparent_hugepage")


def pinned_vm(backend: Backend) -> int:
    """mm->pinned_vm (VmPin) in bytes; on the mock, what the mock iommufd pinned."""
    kernel = getattr(backend, "kernel", None)
    if kernel is not None:
        return int(kernel.state["iommufd"].pinned_vm)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPin:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def bound(env: Env, *, attach: bool = True) -> Iterator[tuple[Backend, IommuFd, Any, Any]]:
    """(backend, iommufd, ioas, bound device): edu's cdev bound, attached to a fresh IOAS."""
    be = env.backend()
    with IommuFd(backend=be) as fd:
        ioas = fd.ioas_alloc()
        dev = fd.bind(env.bdf)
        if attach:
            dev.attach(ioas)
        yield be, fd, ioas, dev


def edu_of(dev: Any) -> Any:
    """An EduDevice on the Device of ``dev`` (an IommufdDevice), bus mastering enabled."""
    from pyvfio.vfio.edu import EduDevice

    edu = EduDevice(dev.device)
    edu.enable_bus_master()
    return edu


# ---------------------------------------------------------------------------------------------


def scenario_cdev_and_ranges(env: Env) -> None:
    """sysfs names the cdev; a fresh IOAS spans every IOVA (alignment 1); BIND gives a device id;
    the attach narrows the IOAS to the vIOMMU: the MSI window is excluded, 4 KiB alignment;
    IOVA_RANGES called with no room answers EMSGSIZE with the count (pyvfio re-calls)."""
    be = env.backend()
    path = cdev_path(env.bdf, backend=be)
    assert path.startswith("/dev/vfio/devices/vfio"), path
    with IommuFd(backend=be) as fd:
        ioas = fd.ioas_alloc()
        fresh = ioas.info()
        assert [(r.start, r.end) for r in fresh.iova_ranges] == [(0, U64_MAX)]
        assert fresh.iova_alignment == 1
        dev = fd.bind(env.bdf)
        assert dev.dev_id > 0 and dev.dev_id != ioas.id
        pt = dev.attach(ioas)
        assert pt not in (0, ioas.id, dev.dev_id)
        info = ioas.info()
        assert info is not fresh
        assert info.iova_alignment == PAGE
        assert info.iova_ranges[0].start == 0
        assert not any(r.contains(MSI_WINDOW) for r in info.iova_ranges), info.iova_ranges
        assert any(r.end == MSI_WINDOW - 1 for r in info.iova_ranges), info.iova_ranges
        assert all(a.end < b.start for a, b in zip(info.iova_ranges, info.iova_ranges[1:]))
        # raw: no room → EMSGSIZE and the number needed
        c = ffi.new("struct iommu_ioas_iova_ranges *")
        c.size, c.ioas_id, c.num_iovas = ffi.sizeof(c[0]), ioas.id, 0
        with pytest.raises(PyvfioError) as ei:
            be.ioctl(fd.fileno(), ioctls.IOMMU_IOAS_IOVA_RANGES, c)
        assert ei.value.errno == errno.EMSGSIZE
        assert c.num_iovas == len(info.iova_ranges) >= 2
        assert c.out_iova_alignment == PAGE
        dev.detach()
        assert [(r.start, r.end) for r in ioas.info().iova_ranges] == [(0, U64_MAX)]


def scenario_map_fixed_and_kernel_chosen(env: Env) -> None:
    """IOAS_MAP at a fixed IOVA and at one the kernel picks (first fit above page 0, aligned
    like the buffer: 0x2000 for an 8 KiB buffer in an empty IOAS with THP, 0x1000 without); UNMAP returns the bytes;
    unmap-all returns the total; the raw errnos: zero length and no access → EINVAL, a range
    cutting a mapping or holding nothing → ENOENT, length 0 → EINVAL."""
    with bound(env) as (_be, _fd, ioas, _dev), DmaBuffer(8192) as a, DmaBuffer(PAGE * 4) as b:
        auto = ioas.map(a)
        assert auto.iova == (0x2000 if thp(env) else 0x1000), hex(auto.iova)
        with DmaBuffer(2 << 20) as huge:  # 2 MiB aligned: kept so with THP
            big = ioas.map(huge)
            assert big.iova == ((2 << 20) if thp(env) else 0x3000), hex(big.iova)
            big.unmap()
        fixed = ioas.map(b, 0x400000)
        assert fixed.iova == 0x400000 and ioas.find(0x401000) is fixed
        with pytest.raises(InvalidArgumentError):
            ioas.map_raw(b.addr, 0x800000, 0)
        with pytest.raises(InvalidArgumentError):
            ioas.map_raw(b.addr, 0x800000, PAGE, flags=0)
        with pytest.raises(InvalidArgumentError):
            ioas.map_raw(b.addr + 0x800, 0x800800, PAGE)  # unaligned for the 4 KiB IOMMU
        with pytest.raises(NotFoundError) as cut:
            ioas.unmap_raw(0x400000, PAGE)  # cuts the 16 KiB mapping
        assert "whole mappings" in (cut.value.hint or "")
        with pytest.raises(NotFoundError):
            ioas.unmap_raw(0x10000000, PAGE)  # nothing there
        with pytest.raises(InvalidArgumentError):
            ioas.unmap_raw(0x400000, 0)
        assert ioas.unmap_raw(0x3FF000, PAGE * 6) == PAGE * 4  # covers it whole
        with pytest.raises(NotFoundError):
            fixed.unmap()  # already gone behind pyvfio's back: the handle is released
        assert fixed.closed and not b.mappings
        again = ioas.map(b, 0x400000)
        assert ioas.unmap_all() == 8192 + PAGE * 4
        assert auto.closed and again.closed and not ioas.mappings
        assert ioas.unmap_raw(0, U64_MAX) == 0  # unmap all of nothing succeeds
        # a range that covers one mapping and cuts the next: ENOENT, but the first is gone
        ioas.map_raw(a.addr, 0x800000, PAGE)
        ioas.map_raw(b.addr, 0x801000, PAGE * 2)
        with pytest.raises(NotFoundError):
            ioas.unmap_raw(0x800000, PAGE * 2)
        with pytest.raises(NotFoundError):
            ioas.unmap_raw(0x800000, PAGE)
        assert ioas.unmap_raw(0x801000, PAGE * 2) == PAGE * 2


def scenario_overlap_eexist(env: Env) -> None:
    """A second mapping overlapping the first gives EEXIST (hint names the overlap); the first
    stays mapped and whole."""
    with bound(env) as (_be, _fd, ioas, _dev), DmaBuffer(PAGE * 2) as a, DmaBuffer(PAGE * 2) as b:
        m = ioas.map(a, 0x200000)
        with pytest.raises(ExistsError) as ei:
            ioas.map(b, 0x201000)
        assert ei.value.errno == errno.EEXIST and "overlaps" in (ei.value.hint or "")
        assert not b.mappings
        assert ioas.find(0x201000) is m
        m.unmap()


def scenario_reserved_msi_refused(env: Env) -> None:
    """The MSI window cannot be mapped: pyvfio refuses before the syscall (RangeError, no
    IOAS_MAP issued), the kernel with EINVAL."""
    be = env.backend()
    counting = CountingBackend(be)
    with IommuFd(backend=counting) as fd, DmaBuffer(PAGE) as buf:  # type: ignore[arg-type]
        ioas = fd.ioas_alloc()
        fd.bind(env.bdf).attach(ioas)
        ioas.info()
        before = list(counting.ops)
        with pytest.raises(RangeError) as ei:
            ioas.map(buf, MSI_WINDOW)
        assert "MSI" in str(ei.value)
        assert counting.ops == before  # refused before any syscall
        with pytest.raises(InvalidArgumentError):
            ioas.map_raw(buf.addr, MSI_WINDOW, PAGE)


def scenario_dma_round_trip(env: Env) -> None:
    """open_device (iommufd + IOAS + bound, attached cdev) + DmaMapper: a pattern goes RAM →
    edu → RAM through the IOAS and comes back byte for byte."""
    be = env.backend()
    with open_device(env.bdf, backend=be) as d:
        edu = edu_of(d.bound)
        mapper = DmaMapper(d.ioas, limit=edu.dma_mask + 1)
        src, dst = DmaBuffer(PAGE), DmaBuffer(PAGE)
        pattern = bytes((i * 29 + 7) & 0xFF for i in range(EDU_DMA))
        src.write(0, pattern)
        dst.fill(0xEE)
        ms = mapper.map(src, write=False)
        md = mapper.map(dst, read=False)
        assert d.ioas.info().usable(ms.iova, PAGE) and md.iova + PAGE <= edu.dma_mask + 1
        edu.to_device(ms.iova, EDU_DMA)
        edu.from_device(md.iova, EDU_DMA)
        assert dst.read(0, EDU_DMA) == pattern
        assert dst.read(EDU_DMA, 1) == b"\xee"
        src.close()
        dst.close()


def scenario_unmapped_write_does_not_land(env: Env) -> None:
    """After IOAS_UNMAP an edu write to that IOVA does not reach memory (intel and the mock log
    a DMAR fault naming it); a read-only mapping refuses device writes; after DETACH the device
    cannot write even a mapped IOVA (blocked)."""
    be = env.backend()
    with open_device(env.bdf, backend=be) as d:
        edu = edu_of(d.bound)
        src, dst = DmaBuffer(PAGE), DmaBuffer(PAGE)
        src.write(0, b"\x5a" * EDU_DMA)
        ms, md = d.ioas.map(src, 0x100000, write=False), d.ioas.map(dst, 0x200000)
        edu.to_device(ms.iova, EDU_DMA)
        edu.from_device(md.iova, 64)
        assert dst.read(0, 64) == b"\x5a" * 64
        dst.fill(0)
        md.unmap()
        assert_unmapped_write_faults(env, be, edu, 0x200000, dst)
        mr = d.ioas.map(dst, 0x200000, write=False)
        edu.from_device(0x200000, 64)
        assert dst.read(0, 64) == bytes(64), "a device write through a read-only mapping landed"
        mr.unmap()
        mw = d.ioas.map(dst, 0x200000)
        d.bound.detach()
        edu.from_device(0x200000, 64)
        assert dst.read(0, 64) == bytes(64), "a detached device wrote memory"
        d.bound.attach(d.ioas)
        edu.from_device(0x200000, 64)
        assert dst.read(0, 64) == b"\x5a" * 64  # attached again: the mapping serves again
        mw.unmap()
        src.close()
        dst.close()


def scenario_copy_between_ioas(env: Env) -> None:
    """IOAS_COPY: a buffer mapped in an IOAS no device uses is copied into the device's IOAS;
    edu reads and writes it there, still after the source mapping is gone (the pages are
    shared). A WRITEABLE copy of a read-only source → EPERM; a source not fully mapped → ENOENT."""
    with bound(env) as (_be, fd, ioas, dev), DmaBuffer(PAGE) as buf, DmaBuffer(PAGE) as out:
        other = fd.ioas_alloc()
        src_map = other.map(buf)  # kernel-chosen in the empty IOAS
        ro = other.map(out, 0x40000000, write=False)
        cp = ioas.copy(src_map, 0x300000)
        assert cp.iova == 0x300000 and cp.buffer is buf
        edu = edu_of(dev)
        buf.write(0, b"copied!" * 100)
        edu.to_device(0x300000, 700)
        src_map.unmap()  # the copy keeps the pages
        edu.from_device(0x300000 + 1024, 700)
        assert buf.read(1024, 700) == b"copied!" * 100
        with pytest.raises(PermissionDeniedError):
            ioas.copy(ro, 0x500000, write=True)
        ro_copy = ioas.copy(ro, 0x500000, write=False)
        ro_copy.unmap()
        c = ffi.new("struct iommu_ioas_copy *")
        c.size = ffi.sizeof(c[0])
        c.flags = ioctls.IOMMU_IOAS_MAP_READABLE | ioctls.IOMMU_IOAS_MAP_FIXED_IOVA
        c.dst_ioas_id, c.src_ioas_id = ioas.id, other.id
        c.length, c.dst_iova, c.src_iova = PAGE * 2, 0x600000, 0x40000000  # 2nd page unmapped
        with pytest.raises(NotFoundError):
            fd.ioctl(ioctls.IOMMU_IOAS_COPY, c)
        cp.unmap()
        ro.unmap()


def scenario_object_rules(env: Env) -> None:
    """Objects and the cdev state machine: every ioctl but BIND before the bind → EINVAL; the
    group cannot open while the cdev is bound, and the cdev cannot bind while the group is open
    (EBUSY); a second bind → EINVAL; DESTROY of the IOAS/HWPT/device in use → EBUSY, of an
    unknown id → ENOENT; ATTACH to an unknown id → ENOENT, to a device id → EINVAL; DETACH when
    not attached is a no-op; the automatic HWPT is gone after the detach."""
    be = env.backend()
    path = cdev_path(env.bdf, backend=be)
    number = Group.number_of(env.bdf, backend=be)
    raw = be.open(path)
    try:
        info = ffi.new("struct vfio_device_info *")
        info.argsz = ffi.sizeof(info[0])
        with pytest.raises(InvalidArgumentError):
            be.ioctl(raw, ioctls.VFIO_DEVICE_GET_INFO, info)
    finally:
        be.close(raw)
    with Group(number, backend=be):
        with IommuFd(backend=be) as fd:
            with pytest.raises(BusyError) as ei:
                fd.bind(env.bdf)
            assert "group" in (ei.value.hint or "")
    with bound(env, attach=False) as (_be, fd, ioas, dev):
        with pytest.raises(BusyError):
            Group(number, backend=be)
        with pytest.raises(InvalidArgumentError):
            fd.bind(env.bdf)  # the device is already open through the cdev path
        b = ffi.new("struct vfio_device_bind_iommufd *")
        b.argsz, b.iommufd = ffi.sizeof(b[0]), fd.fileno()
        with pytest.raises(InvalidArgumentError):
            be.ioctl(dev.device.fileno(), ioctls.VFIO_DEVICE_BIND_IOMMUFD, b)
        dev.detach()  # not attached: no-op
        with pytest.raises(NotFoundError):
            dev.attach(0x7FFF0000)
        with pytest.raises(InvalidArgumentError):
            dev.attach(dev.dev_id)
        pt = dev.attach(ioas)
        with pytest.raises(BusyError):
            fd.destroy(ioas.id)
        with pytest.raises(BusyError):
            fd.destroy(pt)
        with pytest.raises(BusyError):
            fd.destroy(dev.dev_id)
        with pytest.raises(NotFoundError):
            fd.destroy(0x7FFF0000)
        assert dev.attach(ioas) == pt  # attaching again to the same IOAS keeps the HWPT
        dev.detach()
        with pytest.raises(NotFoundError):
            fd.destroy(pt)  # the automatic HWPT went with its last device
        second = fd.ioas_alloc()
        fd.destroy(second.id)
        second.closed = True
        fd.ioases.remove(second)
    with Group(number, backend=be):  # everything closed: the group opens again
        pass


def scenario_hwpt_and_hw_info(env: Env) -> None:
    """GET_HW_INFO (intel: INTEL_VTD with cap/ecap registers; amd, virtio: NONE); a HWPT made by
    HWPT_ALLOC serves DMA once the device attaches to it, cannot be destroyed while attached
    (EBUSY), and holds its IOAS; DIRTY_TRACKING is refused where the vIOMMU lacks it (pyvfio's
    probe and the kernel's EOPNOTSUPP both raise UnsupportedError)."""
    with bound(env, attach=False) as (_be, fd, ioas, dev), DmaBuffer(PAGE) as buf:
        hw = dev.hw_info()
        variant = env.facts.get("variant", "intel")
        if variant == "intel":
            assert hw.type == HwInfoType.INTEL_VTD
            assert len(hw.data) >= ffi.sizeof("struct iommu_hw_info_vtd")
            assert hw.vtd_cap_reg and hw.vtd_ecap_reg is not None
        else:  # amd-iommu and virtio-iommu have no hw_info op in 6.12
            assert hw.type == HwInfoType.NONE and hw.data == b""
        if not hw.dirty_tracking:
            with pytest.raises(UnsupportedError) as ei:
                fd.hwpt_alloc(dev.dev_id, ioas, dirty_tracking=True)
            assert "dirty" in (ei.value.hint or "")
            with pytest.raises(UnsupportedError) as raw:
                fd.hwpt_alloc(dev.dev_id, ioas, dirty_tracking=True, probe=False)
            assert raw.value.errno == errno.EOPNOTSUPP
        hwpt = fd.hwpt_alloc(dev.dev_id, ioas)
        with pytest.raises(BusyError):
            fd.destroy(ioas.id)  # the HWPT holds the IOAS
        ranges = [(r.start, r.end) for r in ioas.info(refresh=True).iova_ranges]
        release = env.facts.get("guest", {}).get("kernel", "")
        if variant == "virtio" and release.startswith("6."):
            # virtio-iommu on 6.x completes a domain only when a device attaches: a HWPT
            # allocated before that has an empty aperture, so the IOAS keeps only IOVA 0
            assert ranges == [(0, 0)], ranges
            hwpt.destroy()
            return
        # 7.x virtio-iommu (like intel and amd) gives the HWPT its aperture at allocation
        assert any(r[0] <= 0x100000 and 0x100000 + PAGE - 1 <= r[1] for r in ranges), ranges
        with pytest.raises(UnsupportedError):
            hwpt.set_dirty_tracking(True)  # allocated without DIRTY_TRACKING
        with pytest.raises(UnsupportedError):
            hwpt.get_dirty_bitmap(0x100000, PAGE * 64)
        assert dev.attach(hwpt) == hwpt.id
        m = ioas.map(buf, 0x100000)
        edu = edu_of(dev)
        buf.write(0, b"hwpt" * 16)
        edu.to_device(0x100000, 64)
        edu.from_device(0x100800, 64)
        assert buf.read(0x800, 64) == b"hwpt" * 16
        with pytest.raises(BusyError):
            hwpt.destroy()
        dev.detach()
        hwpt.destroy()
        m.unmap()


def scenario_allow_iovas(env: Env) -> None:
    """ALLOW_IOVAS keeps kernel-chosen IOVAs inside the allowed ranges; an allowed range over
    the MSI window makes the attach fail (EADDRINUSE: the device's reserved region cannot be
    reserved); after the attach, allowing a reserved range → EADDRINUSE."""
    with bound(env, attach=False) as (_be, fd, ioas, dev), DmaBuffer(PAGE) as buf:
        ioas.allow_iovas([(0x10000000, 0x1FFFFFFF)])
        m = ioas.map(buf)
        assert 0x10000000 <= m.iova and m.iova + PAGE - 1 <= 0x1FFFFFFF, hex(m.iova)
        m.unmap()
        ioas.allow_iovas([(0xF0000000, 0xFFFFFFFF)])
        with pytest.raises(PyvfioError) as ei:
            dev.attach(ioas)
        assert ei.value.errno == errno.EADDRINUSE
        assert dev.pt_id is None
        ioas.allow_iovas([])
        dev.attach(ioas)
        with pytest.raises(PyvfioError) as ei2:
            ioas.allow_iovas([(MSI_WINDOW, MSI_WINDOW + 0xFFFFF)])
        assert ei2.value.errno == errno.EADDRINUSE
        with pytest.raises(RangeError):
            ioas.allow_iovas([(5, 5)])


def scenario_options(env: Env) -> None:
    """IOMMU_OPTION: RLIMIT_MODE reads 0 on a fresh /dev/iommu, can be set to 1 before any
    object exists (root has CAP_SYS_RESOURCE) and not after (EBUSY); HUGE_PAGES per IOAS reads 1,
    can be turned off on an IOAS without a domain; an unknown option → EOPNOTSUPP."""
    be = env.backend()
    with IommuFd(backend=be) as fd:
        assert fd.rlimit_mode == 0
        if has_cap(CAP_SYS_RESOURCE):
            fd.rlimit_mode = 1
            assert fd.rlimit_mode == 1
        else:  # e.g. a container without CAP_SYS_RESOURCE
            with pytest.raises(PermissionDeniedError):
                fd.rlimit_mode = 1
        ioas = fd.ioas_alloc()
        with pytest.raises(BusyError if has_cap(CAP_SYS_RESOURCE) else PermissionDeniedError):
            fd.rlimit_mode = 0
        assert ioas.huge_pages is True
        ioas.huge_pages = False
        assert ioas.huge_pages is False
        assert ioas.info().iova_alignment == PAGE  # no large pages: page granular
        ioas.huge_pages = True
        with pytest.raises(UnsupportedError):
            fd.option(0x7777)


def scenario_pinned_memory_accounting(env: Env) -> None:
    """Pages are pinned while the IOAS has a domain: a map before the attach pins nothing
    (VmPin unchanged), the attach pins it, a map after pins at once, unmaps unpin (VmPin back to
    its baseline). With CAP_IPC_LOCK (root) nothing is charged to VmLck."""
    with bound(env, attach=False) as (be, _fd, ioas, dev), DmaBuffer(64 << 10, hugepages=None) as a, \
            DmaBuffer(128 << 10, hugepages=None) as b:
        base_pin, base_lck = pinned_vm(be), locked_vm(be)
        ma = ioas.map(a, 0x100000)
        assert pinned_vm(be) == base_pin
        dev.attach(ioas)
        assert pinned_vm(be) == base_pin + a.size
        mb = ioas.map(b, 0x200000)
        assert pinned_vm(be) == base_pin + a.size + b.size
        if has_cap(CAP_IPC_LOCK):
            assert locked_vm(be) == base_lck
        ma.unmap()
        assert pinned_vm(be) == base_pin + b.size
        dev.detach()
        assert pinned_vm(be) == base_pin  # no domain left: unpinned
        mb.unmap()
        assert pinned_vm(be) == base_pin


def scenario_memlock_enomem(env: Env) -> dict[str, Any]:
    """Without CAP_IPC_LOCK (a setpriv child) and with RLIMIT_MEMLOCK 1 MiB above the current
    locked memory: in RLIMIT_MODE 1 a small map is charged to VmLck and a larger one fails with
    ENOMEM (hint names RLIMIT_MEMLOCK); in the default mode 0 the charge goes to the user (VmLck
    untouched) and the larger map fails too; VmPin and VmLck return to their baselines."""
    out: dict[str, Any] = {}
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.dirname(tests_dir)
    envvars = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, repo, os.environ.get("PYTHONPATH", "")]))
    # RLIMIT_MODE 1 needs CAP_SYS_RESOURCE (the QEMU guest's root has it; some containers not)
    for mode in (("mm", "user") if has_cap(CAP_SYS_RESOURCE) else ("user",)):
        cmd = ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock",
               sys.executable, "-m", "scenarios.iommufd", "memlock-child", env.kind, env.bdf, mode]
        run = subprocess.run(cmd, capture_output=True, text=True, env=envvars, timeout=300)
        assert run.returncode == 0, f"child ({mode}) failed ({run.returncode}): {run.stderr[-3000:]}"
        res = json.loads(run.stdout.strip().splitlines()[-1])
        assert res["cap_ipc_lock"] is False
        assert res["errno"] == errno.ENOMEM, res
        assert "RLIMIT_MEMLOCK" in res["hint"], res["hint"]
        assert res["pin_during"] == res["pin_base"] + res["small"], res
        if mode == "mm":
            assert res["rlimit_mode"] == 1
            assert res["lck_during"] == res["lck_base"] + res["small"], res
        else:
            assert res["rlimit_mode"] == 0
            assert res["lck_during"] == res["lck_base"], res  # charged to the user, not VmLck
        assert res["pin_after_fail"] == res["pin_during"] and res["lck_after_fail"] == res["lck_during"], res
        assert res["pin_after"] == res["pin_base"] and res["lck_after"] == res["lck_base"], res
        out[mode] = res
    return out


def _memlock_child(kind: str, bdf: str, mode: str) -> dict[str, Any]:
    from pyvfio.seam import get_backend
    from pyvfio.seam.mock import MockBackend

    be: Backend = MockBackend() if kind == "mock" else get_backend("real")
    cap = has_cap(CAP_IPC_LOCK)
    small, big = 256 << 10, 4 << 20
    res: dict[str, Any] = {"cap_ipc_lock": cap, "small": small, "big": big, "errno": None, "hint": ""}
    with IommuFd(backend=be) as fd, DmaBuffer(small, hugepages=None) as s, \
            DmaBuffer(big, hugepages=None) as b:
        if mode == "mm":
            fd.rlimit_mode = 1
        res["rlimit_mode"] = fd.rlimit_mode
        ioas = fd.ioas_alloc()
        fd.bind(bdf).attach(ioas)
        res["lck_base"], res["pin_base"] = locked_vm(be), pinned_vm(be)
        limit = (res["lck_base"] + (1 << 20)) // PAGE * PAGE
        _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK,
                           (limit, hard if hard == resource.RLIM_INFINITY or hard >= limit else limit))
        m = ioas.map(s, 0x100000)
        res["lck_during"], res["pin_during"] = locked_vm(be), pinned_vm(be)
        try:
            ioas.map(b, 0x1000000)
        except OutOfMemoryError as e:
            res["errno"], res["hint"] = e.errno, e.hint or ""
        except OSError as e:
            res["errno"], res["hint"] = e.errno, str(e)
        res["lck_after_fail"], res["pin_after_fail"] = locked_vm(be), pinned_vm(be)
        m.unmap()
        res["lck_after"], res["pin_after"] = locked_vm(be), pinned_vm(be)
    return res


def scenario_legacy_path_beside_cdev(env: Env) -> None:
    """The iommufd kernel keeps the real VFIO container (IOMMUFD_VFIO_CONTAINER=n): the legacy
    path still opens the group; while it does, the cdev cannot bind (EBUSY), and once it is
    closed the cdev binds."""
    from pyvfio.vfio import open_device as open_legacy

    be = env.backend()
    with open_legacy(env.bdf, backend=be) as d:
        assert d.iommu.info().iova_pgsizes
        with IommuFd(backend=be) as fd, pytest.raises(BusyError):
            fd.bind(env.bdf)
    with IommuFd(backend=be) as fd:
        fd.bind(env.bdf).close()


ALL = [
    scenario_legacy_path_beside_cdev,
    scenario_cdev_and_ranges,
    scenario_map_fixed_and_kernel_chosen,
    scenario_overlap_eexist,
    scenario_reserved_msi_refused,
    scenario_object_rules,
    scenario_allow_iovas,
    scenario_options,
    scenario_pinned_memory_accounting,
    scenario_memlock_enomem,
    scenario_hwpt_and_hw_info,
    scenario_copy_between_ioas,
    scenario_dma_round_trip,
    scenario_unmapped_write_does_not_land,
]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "memlock-child":
        print(json.dumps(_memlock_child(sys.argv[2], sys.argv[3], sys.argv[4])))
        sys.exit(0)
    sys.exit(f"usage: {sys.argv[0]} memlock-child mock|real BDF mm|user")
