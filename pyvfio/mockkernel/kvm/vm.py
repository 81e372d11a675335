"""A VM file: memslots, dirty logs, the dirty ring, ioeventfds and irqfds (virt/kvm/kvm_main.c,
eventfd.c, dirty_ring.c)."""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np

from ... import ioctls as I
from ..core import KernelError, MockFile, MockKernel, handles
from ..memory import read_user, user_mapped, write_user
from .core import DIRTY_RING_RSVD_ENTRIES, KVM_MEM_MAX_NR_PAGES, PAGE, TASK_SIZE, state, _addr, _eventfd_id, _fd_kind, _ptr
from .devices import GuestMemfdFile, KvmVfioDeviceFile
from ...util.intervals import SortedIndex
from .vcpu import VcpuFile


# ===============================================================================================
class Slot:
    __slots__ = ("as_id", "id", "base_gfn", "npages", "hva", "flags", "dirty", "ring_dirty",
                 "gmem", "gmem_offset")

    def __init__(self, as_id: int, sid: int, base_gfn: int, npages: int, hva: int, flags: int) -> None:
        self.as_id, self.id, self.base_gfn, self.npages, self.hva, self.flags = as_id, sid, base_gfn, npages, hva, flags
        self.dirty: np.ndarray | None = None      # u64 words, kernel bitmap
        self.ring_dirty: set[int] = set()          # pages pushed to a ring, not yet reset
        self.gmem: GuestMemfdFile | None = None
        self.gmem_offset = 0

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    def mark(self, page: int) -> None:
        assert self.dirty is not None
        self.dirty[page >> 6] |= np.uint64(1 << (page & 63))


def _end_gfn(s: Slot) -> int:
    return s.end_gfn


class VmFile(MockFile):
    """A VM: memslots, dirty logs, vCPUs, devices, ioeventfds, irqfds."""

    def __init__(self, kernel: MockKernel, path: str) -> None:
        super().__init__(kernel, path)
        self.cfg = state(kernel).config
        self.slots: dict[int, Slot] = {}
        #: Per address space, the slots by base gfn (disjoint).
        self.index: list[SortedIndex[Slot]] = [SortedIndex() for _ in range(self.cfg.address_spaces)]
        self.manual_protect = 0
        self.dirty_ring_size = 0
        self.vcpus: dict[int, VcpuFile] = {}
        self.created_vcpus = 0
        self.vfio_device: KvmVfioDeviceFile | None = None
        self.irqchip = False
        self.ioeventfds: list[dict[str, Any]] = []
        self.irqfds: dict[int, tuple[int, int]] = {}  # eventfd inode key -> (gsi, dup fd)
        self.nr_ioctls = 0

    def ioctl(self, request: int, arg: Any) -> int:
        self.nr_ioctls += 1
        return super().ioctl(request, arg)

    # -- caps --------------------------------------------------------------------------------
    @handles("KVM_CHECK_EXTENSION")
    def check_extension(self, arg: Any) -> int:
        return self.cfg.caps().get(int(arg), 0)

    @handles("KVM_ENABLE_CAP")
    def enable_cap(self, arg: Any) -> int:
        c = _ptr(arg, "struct kvm_enable_cap")
        cap, flags, a0 = int(c.cap), int(c.flags), int(c.args[0])
        if cap == I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and self.cfg.manual_protect_caps:
            allowed = I.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
            if a0 & I.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE:
                allowed = self.cfg.manual_protect_caps
            if flags or a0 & ~allowed:
                raise KernelError(errno.EINVAL, f"kvm: manual dirty log protect options {a0:#x}")
            self.manual_protect = a0
            return 0
        if cap in (I.KVM_CAP_DIRTY_LOG_RING, I.KVM_CAP_DIRTY_LOG_RING_ACQ_REL) and self.cfg.dirty_ring_max:
            size = a0 & 0xFFFFFFFF
            if not size or size & (size - 1):
                raise KernelError(errno.EINVAL, "kvm: dirty ring size not a power of two")
            if size < PAGE or size < DIRTY_RING_RSVD_ENTRIES * 16:
                raise KernelError(errno.EINVAL, "kvm: dirty ring smaller than a page")
            if size > self.cfg.dirty_ring_max:
                raise KernelError(errno.E2BIG, "kvm: dirty ring too large")
            if self.dirty_ring_size or self.created_vcpus:
                raise KernelError(errno.EINVAL, "kvm: dirty ring already set or vCPUs exist")
            self.dirty_ring_size = size
            return 0
        raise KernelError(errno.EINVAL, f"kvm: cap {cap} cannot be enabled")

    # -- memslots ----------------------------------------------------------------------------
    @handles("KVM_SET_USER_MEMORY_REGION")
    def set_user_memory_region(self, arg: Any) -> int:
        r = _ptr(arg, "struct kvm_userspace_memory_region")
        if int(r.flags) & ~(I.KVM_MEM_LOG_DIRTY_PAGES | I.KVM_MEM_READONLY):
            raise KernelError(errno.EINVAL, "kvm: v1 memslot flags")
        return self._set_region(int(r.slot), int(r.flags), int(r.guest_phys_addr), int(r.memory_size),
                                int(r.userspace_addr), 0, 0)

    @handles("KVM_SET_USER_MEMORY_REGION2")
    def set_user_memory_region2(self, arg: Any) -> int:
        if not self.cfg.user_memory2:
            raise KernelError(errno.ENOTTY)
        r = _ptr(arg, "struct kvm_userspace_memory_region2")
        return self._set_region(int(r.slot), int(r.flags), int(r.guest_phys_addr), int(r.memory_size),
                                int(r.userspace_addr), int(r.guest_memfd), int(r.guest_memfd_offset))

    def _valid_flags(self) -> int:
        v = I.KVM_MEM_LOG_DIRTY_PAGES
        if self.cfg.readonly_mem:
            v |= I.KVM_MEM_READONLY
        if self.cfg.guest_memfd:
            v |= I.KVM_MEM_GUEST_MEMFD
        return v

    def _set_region(self, slot: int, flags: int, gpa: int, size: int, hva: int, gfd: int, goff: int) -> int:
        if flags & ~self._valid_flags():
            raise KernelError(errno.EINVAL, f"kvm: memslot flags {flags:#x}")
        gm = flags & I.KVM_MEM_GUEST_MEMFD
        if gm and flags & I.KVM_MEM_LOG_DIRTY_PAGES:
            raise KernelError(errno.EINVAL, "kvm: dirty logging of guest_memfd memory")
        as_id, sid = slot >> 16, slot & 0xFFFF
        if sid >= self.cfg.nr_memslots:
            raise KernelError(errno.EINVAL, f"kvm: slot id {sid}")
        if size & (PAGE - 1) or gpa & (PAGE - 1):
            raise KernelError(errno.EINVAL, "kvm: unaligned size or gpa")
        if hva & (PAGE - 1) or hva + size > TASK_SIZE:
            raise KernelError(errno.EINVAL, "kvm: hva not page aligned or not a user address")
        if gm and (goff & (PAGE - 1) or goff + size >= 1 << 64):
            raise KernelError(errno.EINVAL, "kvm: guest_memfd offset")
        if as_id >= self.cfg.address_spaces:
            raise KernelError(errno.EINVAL, f"kvm: address space {as_id}")
        if gpa + size >= 1 << 64:
            raise KernelError(errno.EINVAL, "kvm: gpa overflow")
        npages = size // PAGE
        if npages > KVM_MEM_MAX_NR_PAGES:
            raise KernelError(errno.EINVAL, "kvm: too many pages")
        old = self.slots.get(slot)
        if not size:
            if old is None:
                raise KernelError(errno.EINVAL, f"kvm: delete of missing slot {sid}")
            self._unindex(old)
            del self.slots[slot]
            return 0
        base = gpa // PAGE
        if old is None:
            change = "create"
        else:
            if gm:
                raise KernelError(errno.EINVAL, "kvm: guest_memfd slots are immutable")
            if hva != old.hva or npages != old.npages or (flags ^ old.flags) & I.KVM_MEM_READONLY:
                raise KernelError(errno.EINVAL, "kvm: only gpa and LOG_DIRTY_PAGES of a slot may change")
            if base != old.base_gfn:
                change = "move"
            elif flags != old.flags:
                change = "flags"
            else:
                return 0
        if change in ("create", "move"):
            if self._overlaps(as_id, base, base + npages, old):
                raise KernelError(errno.EEXIST, "kvm: memslot overlap")
            if gpa + size > 1 << self.cfg.max_gpa_bits:
                raise KernelError(errno.EINVAL, "kvm: beyond the guest physical address space")
        gmem = None
        if gm:
            f = self.kernel.files.get(gfd)
            if not isinstance(f, GuestMemfdFile) or f.vm is not self:
                raise KernelError(errno.EINVAL, "kvm: not a guest_memfd of this VM")
            if goff + size > f.size:
                raise KernelError(errno.EINVAL, "kvm: beyond the guest_memfd")
            gmem = f
        new = Slot(as_id, sid, base, npages, hva, flags)
        new.gmem, new.gmem_offset = gmem, goff
        if flags & I.KVM_MEM_LOG_DIRTY_PAGES:
            if old is not None and old.dirty is not None:
                new.dirty = old.dirty
                new.ring_dirty = old.ring_dirty
            elif not self.dirty_ring_size:
                new.dirty = np.zeros((npages + 63) // 64, dtype="<u8")
                if self.manual_protect & I.KVM_DIRTY_LOG_INITIALLY_SET:
                    new.dirty[:] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
                    if npages % 64:
                        new.dirty[-1] = np.uint64((1 << (npages % 64)) - 1)
        if old is not None:
            self._unindex(old)
        self.slots[slot] = new
        self._index(new)
        return 0

    def _index(self, s: Slot) -> None:
        self.index[s.as_id].insert(s.base_gfn, s)

    def _unindex(self, s: Slot) -> None:
        self.index[s.as_id].remove(s.base_gfn, s)

    def _overlaps(self, as_id: int, start: int, end: int, exclude: Slot | None) -> bool:
        for s in self.index[as_id].below(end):
            if s is not exclude:
                return s.end_gfn > start
        return False

    def slot_at(self, gpa: int, as_id: int = 0) -> Slot | None:
        gfn = gpa // PAGE
        return self.index[as_id].containing(gfn, _end_gfn)

    # -- dirty logs ----------------------------------------------------------------------------
    def _log_slot(self, slot: int) -> Slot:
        if self.dirty_ring_size:
            raise KernelError(errno.ENXIO, "kvm: dirty ring in use")
        as_id, sid = slot >> 16, slot & 0xFFFF
        if as_id >= self.cfg.address_spaces or sid >= self.cfg.nr_memslots:
            raise KernelError(errno.EINVAL, f"kvm: slot {slot:#x}")
        return self.slots.get(slot)  # type: ignore[return-value]

    @handles("KVM_GET_DIRTY_LOG")
    def get_dirty_log(self, arg: Any) -> int:
        d = _ptr(arg, "struct kvm_dirty_log")
        s = self._log_slot(int(d.slot))
        if s is None or s.dirty is None:
            raise KernelError(errno.ENOENT, "kvm: no dirty bitmap for the slot")
        n = s.dirty.size * 8
        addr = _addr(d.dirty_bitmap)
        if not user_mapped(addr, n, "w"):
            raise KernelError(errno.EFAULT, "kvm: dirty bitmap buffer")
        write_user(addr, s.dirty.tobytes())
        if not self.manual_protect:
            s.dirty[:] = 0
        return 0

    @handles("KVM_CLEAR_DIRTY_LOG")
    def clear_dirty_log(self, arg: Any) -> int:
        c = _ptr(arg, "struct kvm_clear_dirty_log")
        s = self._log_slot(int(c.slot))
        first, num = int(c.first_page), int(c.num_pages)
        if first & 63:
            raise KernelError(errno.EINVAL, "kvm: first_page not 64-aligned")
        if s is None or s.dirty is None:
            raise KernelError(errno.ENOENT, "kvm: no dirty bitmap for the slot")
        if first > s.npages or num > s.npages - first or (num < s.npages - first and num & 63):
            raise KernelError(errno.EINVAL, "kvm: clear range")
        nw = (num + 63) // 64
        addr = _addr(c.dirty_bitmap)
        if not user_mapped(addr, nw * 8, "r"):
            raise KernelError(errno.EFAULT, "kvm: clear bitmap buffer")
        mask = np.frombuffer(read_user(addr, nw * 8), dtype="<u8")
        w0 = first // 64
        s.dirty[w0:w0 + nw] &= ~mask
        return 0

    # -- vCPUs and the dirty ring ----------------------------------------------------------------
    @handles("KVM_CREATE_VCPU")
    def create_vcpu(self, arg: Any) -> int:
        vid = int(arg)
        if vid >= self.cfg.max_vcpu_id:
            raise KernelError(errno.EINVAL, f"kvm: vcpu id {vid}")
        if self.created_vcpus >= self.cfg.max_vcpus:
            raise KernelError(errno.EINVAL, "kvm: too many vcpus")
        if vid in self.vcpus:
            raise KernelError(errno.EEXIST, f"kvm: vcpu {vid} exists")
        v = VcpuFile(self.kernel, f"anon_inode:kvm-vcpu:{vid}", self, vid)
        self.vcpus[vid] = v
        self.created_vcpus += 1
        return self.kernel.install(v)

    @handles("KVM_RESET_DIRTY_RINGS")
    def reset_dirty_rings(self, arg: Any) -> int:
        if not self.dirty_ring_size:
            return 0
        return sum(v.ring_reset() for v in self.vcpus.values())

    @handles("KVM_CREATE_IRQCHIP")
    def create_irqchip(self, arg: Any) -> int:
        if self.irqchip:
            raise KernelError(errno.EEXIST, "kvm: irqchip exists")
        if self.created_vcpus:
            raise KernelError(errno.EINVAL, "kvm: irqchip after vcpus")
        self.irqchip = True
        return 0

    # -- devices -------------------------------------------------------------------------------
    @handles("KVM_CREATE_DEVICE")
    def create_device(self, arg: Any) -> int:
        c = _ptr(arg, "struct kvm_create_device")
        if int(c.type) != I.KVM_DEV_TYPE_VFIO:
            raise KernelError(errno.ENODEV, f"kvm: device type {int(c.type)}")
        if int(c.flags) & I.KVM_CREATE_DEVICE_TEST:
            return 0
        if self.vfio_device is not None:
            raise KernelError(errno.EBUSY, "kvm: only one VFIO device per VM")
        self.get()  # the device holds the VM (kvm_get_kvm)
        dev = KvmVfioDeviceFile(self.kernel, "anon_inode:kvm-vfio", self)
        self.vfio_device = dev
        c.fd = self.kernel.install(dev)
        return 0

    # -- ioeventfd / irqfd -------------------------------------------------------------------------
    def _eventfd(self, fd: int) -> int:
        kind = _fd_kind(self.kernel, fd)
        if kind is None:
            raise KernelError(errno.EBADF, f"fd {fd} is not open")
        if kind != "eventfd":
            raise KernelError(errno.EINVAL, f"fd {fd} is not an eventfd")
        return _eventfd_id(fd)

    @handles("KVM_IOEVENTFD")
    def ioeventfd(self, arg: Any) -> int:
        a = _ptr(arg, "struct kvm_ioeventfd")
        flags, ln, addr, fd = int(a.flags), int(a.len), int(a.addr), int(a.fd)
        bus = "pio" if flags & I.KVM_IOEVENTFD_FLAG_PIO else "mmio"
        dm = int(a.datamatch) if flags & I.KVM_IOEVENTFD_FLAG_DATAMATCH else None
        if flags & I.KVM_IOEVENTFD_FLAG_DEASSIGN:
            key = self._eventfd(fd)
            for e in self.ioeventfds:
                if (e["key"] == key and e["bus"] == bus and e["addr"] == addr and e["len"] == ln
                        and e["datamatch"] == dm):
                    self.ioeventfds.remove(e)
                    os.close(e["fd"])
                    return 0
            raise KernelError(errno.ENOENT, "kvm: no such ioeventfd")
        if ln not in (0, 1, 2, 4, 8) or addr + ln >= 1 << 64 or flags & ~0xF or (not ln and dm is not None):
            raise KernelError(errno.EINVAL, "kvm: ioeventfd arguments")
        key = self._eventfd(fd)
        for e in self.ioeventfds:
            if e["bus"] == bus and e["addr"] == addr and (
                    not e["len"] or not ln or (e["len"] == ln and (e["datamatch"] is None or dm is None
                                                                    or e["datamatch"] == dm))):
                raise KernelError(errno.EEXIST, "kvm: ioeventfd collision")
        self.ioeventfds.append(dict(key=key, fd=os.dup(fd), bus=bus, addr=addr, len=ln, datamatch=dm))
        return 0

    def _ioeventfd_hit(self, bus: str, addr: int, size: int, value: int) -> bool:
        for e in self.ioeventfds:
            if e["bus"] == bus and e["addr"] == addr and (not e["len"] or e["len"] == size) and (
                    e["datamatch"] is None or e["datamatch"] == value):
                os.write(e["fd"], (1).to_bytes(8, "little"))
                return True
        return False

    @handles("KVM_IRQFD")
    def irqfd(self, arg: Any) -> int:
        a = _ptr(arg, "struct kvm_irqfd")
        flags, fd, gsi = int(a.flags), int(a.fd), int(a.gsi)
        if flags & ~(I.KVM_IRQFD_FLAG_DEASSIGN | I.KVM_IRQFD_FLAG_RESAMPLE):
            raise KernelError(errno.EINVAL, "kvm: irqfd flags")
        if flags & I.KVM_IRQFD_FLAG_DEASSIGN:
            kind = _fd_kind(self.kernel, fd)
            if kind is None:
                raise KernelError(errno.EBADF)
            if kind == "eventfd":
                key = _eventfd_id(fd)
                ent = self.irqfds.get(key)
                if ent is not None and ent[0] == gsi:
                    os.close(self.irqfds.pop(key)[1])
            return 0
        if not self.irqchip:
            raise KernelError(errno.EINVAL, "kvm: irqfd needs an in-kernel irqchip")
        key = self._eventfd(fd)
        if flags & I.KVM_IRQFD_FLAG_RESAMPLE:
            self._eventfd(int(a.resamplefd))
        if key in self.irqfds:
            raise KernelError(errno.EBUSY, "kvm: eventfd already an irqfd")
        self.irqfds[key] = (gsi, os.dup(fd))
        return 0

    # -- guest_memfd ------------------------------------------------------------------------------
    @handles("KVM_CREATE_GUEST_MEMFD")
    def create_guest_memfd(self, arg: Any) -> int:
        if not self.cfg.guest_memfd:
            raise KernelError(errno.ENOTTY)
        g = _ptr(arg, "struct kvm_create_guest_memfd")
        size, flags = int(g.size), int(g.flags)
        if flags & ~0x3 or not size or size & (PAGE - 1) or any(int(x) for x in g.reserved):
            raise KernelError(errno.EINVAL, "kvm: guest_memfd arguments")
        self.get()
        return self.kernel.install(GuestMemfdFile(self.kernel, "anon_inode:[kvm-gmem]", self, size))

    def release(self) -> None:
        for e in self.ioeventfds:
            os.close(e["fd"])
        for _, dup in self.irqfds.values():
            os.close(dup)
        self.ioeventfds.clear()
        self.irqfds.clear()
        self.slots.clear()
        try:
            state(self.kernel).vms.remove(self)
        except ValueError:
            pass


