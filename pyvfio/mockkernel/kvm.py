"""Mock KVM: /dev/kvm, VM, vCPU, device and guest_memfd files with the kernel's rules and errnos.

Follows virt/kvm/kvm_main.c, eventfd.c, vfio.c and dirty_ring.c (6.x; checked against the
6.18 host kernel by the tests that run each rule on both backends):

* memslots (__kvm_set_memory_region): EINVAL for flags outside LOG_DIRTY_PAGES|READONLY
  (+GUEST_MEMFD with REGION2), GUEST_MEMFD with LOG_DIRTY_PAGES, slot id >= the user slot count
  or a bad address space, unaligned size/gpa/hva, hva range outside the user address space,
  gpa overflow or beyond the 52-bit guest space, too many pages, deleting a missing slot,
  changing an existing slot's size, hva or READONLY flag, modifying a guest_memfd slot; EEXIST
  when a created or moved slot overlaps another one. A move keeps the dirty bitmap.
* dirty logs: GET (ENXIO with a dirty ring; EINVAL id; ENOENT no slot or no logging; EFAULT
  when the user buffer does not hold ALIGN(npages, 64) / 8 bytes) clears what it reports unless
  MANUAL_DIRTY_LOG_PROTECT2 is enabled; CLEAR (first_page % 64, num_pages % 64 unless reaching
  the slot end, range inside the slot: EINVAL). INITIALLY_SET starts new bitmaps all-dirty.
* the dirty ring: enable before vCPUs, power of two >= a page (EINVAL), <= max (E2BIG), once;
  per-vCPU rings of struct kvm_dirty_gfn mmap'd at KVM_DIRTY_LOG_PAGE_OFFSET; a page is pushed
  once until harvested (flags RESET) and KVM_RESET_DIRTY_RINGS re-protects it. When the ring
  holds size - 64 entries, the next KVM_RUN exits at once with KVM_EXIT_DIRTY_RING_FULL until
  entries are reset (as observed on the 6.18 host: the run that fills it still ends normally).
* the KVM VFIO device: one per VM (EBUSY), FILE_ADD of a non-VFIO fd EINVAL, closed fd EBADF,
  twice EEXIST, DEL of a file not added ENOENT, unknown group/attr ENXIO, GET_DEVICE_ATTR EPERM.
* ioeventfd (len 0/1/2/4/8, datamatch needs a len, collisions EEXIST, deassign of a missing one
  ENOENT) and irqfd (needs the in-kernel irqchip: EINVAL; one irqfd per eventfd: EBUSY).

The vCPU executes the few real-mode instruction forms of :mod:`pyvfio.kvm.guestcode` (anything
else: KVM_EXIT_INTERNAL_ERROR): stores go through the memslots (dirty bits, dirty ring, MMIO
exits for unmapped or read-only gpas, ioeventfds), ``out`` gives KVM_EXIT_IO unless an
ioeventfd takes it, ``hlt`` gives KVM_EXIT_HLT.

Configuration (``kernel.state["kvm"].config``) mirrors the development host: 32764 slots, one
address space, read-only memory, manual protect caps 3, a dirty ring up to 1 MiB, guest_memfd.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ioctls as I
from ..uapi import ffi
from .core import KernelError, MockFile, MockKernel, handles

NAME = "kvm"
PAGE = 4096
TASK_SIZE = 0x7FFF_FFFF_F000
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
DIRTY_RING_RSVD_ENTRIES = 64


@dataclass
class KvmConfig:
    """What the mock KVM reports and enforces (defaults: the x86 development host)."""

    nr_memslots: int = 32764
    address_spaces: int = 1
    max_vcpus: int = 1024
    max_vcpu_id: int = 4096
    readonly_mem: bool = True
    manual_protect_caps: int = 3
    dirty_ring_max: int = 1 << 20
    guest_memfd: bool = True
    user_memory2: bool = True
    max_gpa_bits: int = 52
    vcpu_mmap_size: int = 3 * PAGE
    vm_types: tuple[int, ...] = (0,)

    def caps(self) -> dict[int, int]:
        return {
            I.KVM_CAP_USER_MEMORY: 1, I.KVM_CAP_SET_TSS_ADDR: 1, I.KVM_CAP_EXT_CPUID: 1,
            I.KVM_CAP_HLT: 1, I.KVM_CAP_IRQCHIP: 1, I.KVM_CAP_SYNC_MMU: 1,
            I.KVM_CAP_NR_VCPUS: 2, I.KVM_CAP_MAX_VCPUS: self.max_vcpus,
            I.KVM_CAP_MAX_VCPU_ID: self.max_vcpu_id, I.KVM_CAP_NR_MEMSLOTS: self.nr_memslots,
            I.KVM_CAP_MULTI_ADDRESS_SPACE: self.address_spaces if self.address_spaces > 1 else 0,
            I.KVM_CAP_READONLY_MEM: int(self.readonly_mem),
            I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: self.manual_protect_caps,
            I.KVM_CAP_DIRTY_LOG_RING: self.dirty_ring_max,
            I.KVM_CAP_DIRTY_LOG_RING_ACQ_REL: self.dirty_ring_max,
            I.KVM_CAP_USER_MEMORY2: int(self.user_memory2),
            I.KVM_CAP_GUEST_MEMFD: int(self.guest_memfd),
            I.KVM_CAP_IOEVENTFD: 1, I.KVM_CAP_IOEVENTFD_ANY_LENGTH: 1, I.KVM_CAP_IRQFD: 1,
            I.KVM_CAP_IRQFD_RESAMPLE: 1, I.KVM_CAP_DEVICE_CTRL: 1, I.KVM_CAP_ENABLE_CAP: 1,
            I.KVM_CAP_ENABLE_CAP_VM: 1, I.KVM_CAP_CHECK_EXTENSION_VM: 1,
            I.KVM_CAP_IMMEDIATE_EXIT: 1, I.KVM_CAP_VM_TYPES: sum(1 << t for t in self.vm_types),
        }


@dataclass
class KvmState:
    config: KvmConfig = field(default_factory=KvmConfig)
    vms: list["VmFile"] = field(default_factory=list)


def install(kernel: MockKernel) -> None:
    kernel.state[NAME] = KvmState()
    kernel.route(r"/dev/kvm", lambda k, m, flags: KvmSystemFile(k, "/dev/kvm"))


def state(kernel: MockKernel) -> KvmState:
    return kernel.state[NAME]


# -- user memory and fds (copy_from_user / fget as the kernel sees them) -------------------------
def _ptr(arg: Any, ctype: str) -> Any:
    if isinstance(arg, int):
        return ffi.cast(ctype + " *", arg)
    return ffi.cast(ctype + " *", arg)


def _addr(p: Any) -> int:
    return int(ffi.cast("uintptr_t", p))


def _fd_kind(kernel: MockKernel, fd: int) -> "MockFile | str | None":
    """The mock file behind ``fd``, "eventfd" for a real eventfd, "other" for another real fd,
    None when ``fd`` is not open (EBADF)."""
    if fd < 0:
        return None
    f = kernel.files.get(fd)
    if f is not None:
        return f
    try:
        os.fstat(fd)
    except OSError:
        return None
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "other"
    return "eventfd" if target == "anon_inode:[eventfd]" else "other"


def _eventfd_id(fd: int) -> int:
    """The identity of the eventfd context behind ``fd`` (all eventfds share one anon inode):
    ``eventfd-id`` of /proc/self/fdinfo (Linux >= 6.2), else the fd number."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("eventfd-id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -fd - 1


def _is_vfio_file(f: Any) -> bool:
    """A VFIO group or device file of the mock VFIO (kvm_vfio_file_is_valid). The classes are
    looked up lazily (the VFIO subsystems may not be loaded); a MockFile with a true
    ``vfio_file`` attribute also counts."""
    if getattr(f, "vfio_file", False):
        return True
    import importlib

    kinds: list[type] = []
    for mod_name, names in (("vfio", ("MockGroup",)), ("pci", ("VfioPciDeviceFile",))):
        try:
            mod = importlib.import_module(f"{__package__}.{mod_name}")
        except ImportError:  # pragma: no cover
            continue
        kinds += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return bool(kinds) and isinstance(f, tuple(kinds))


class _SharedPages:
    """Kernel memory that userspace can mmap (kvm_run, the dirty ring): a memfd kept mapped by
    the mock kernel, so userspace munmap never pulls it from under the kernel."""

    def __init__(self, size: int, name: str) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)
        self.addr = _addr(ffi.from_buffer(self.map))

    def user_mmap(self, length: int, offset: int, flags: int, prot: int) -> int:
        if offset + length > self.size:
            raise KernelError(errno.EINVAL, "mmap beyond the object")
        from ..seam.real import RealBackend

        return RealBackend().mmap(length, prot, flags, self.fd, offset)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a cffi view still alive: leave it to the GC
            pass
        os.close(self.fd)


# ===============================================================================================
class KvmSystemFile(MockFile):
    """/dev/kvm."""

    @property
    def st(self) -> KvmState:
        return state(self.kernel)

    @handles("KVM_GET_API_VERSION")
    def get_api_version(self, arg: Any) -> int:
        return I.KVM_API_VERSION

    @handles("KVM_CHECK_EXTENSION")
    def check_extension(self, arg: Any) -> int:
        return self.st.config.caps().get(int(arg), 0)

    @handles("KVM_GET_VCPU_MMAP_SIZE")
    def get_vcpu_mmap_size(self, arg: Any) -> int:
        return self.st.config.vcpu_mmap_size

    @handles("KVM_CREATE_VM")
    def create_vm(self, arg: Any) -> int:
        if int(arg) not in self.st.config.vm_types:
            raise KernelError(errno.EINVAL, f"kvm: VM type {int(arg)} not supported")
        vm = VmFile(self.kernel, "anon_inode:kvm-vm")
        self.st.vms.append(vm)
        return self.kernel.install(vm)


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


class VmFile(MockFile):
    """A VM: memslots, dirty logs, vCPUs, devices, ioeventfds, irqfds."""

    def __init__(self, kernel: MockKernel, path: str) -> None:
        super().__init__(kernel, path)
        self.cfg = state(kernel).config
        self.slots: dict[int, Slot] = {}
        self.starts: list[list[int]] = [[] for _ in range(self.cfg.address_spaces)]
        self.ordered: list[list[Slot]] = [[] for _ in range(self.cfg.address_spaces)]
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
        i = bisect.bisect_left(self.starts[s.as_id], s.base_gfn)
        self.starts[s.as_id].insert(i, s.base_gfn)
        self.ordered[s.as_id].insert(i, s)

    def _unindex(self, s: Slot) -> None:
        i = bisect.bisect_left(self.starts[s.as_id], s.base_gfn)
        while self.ordered[s.as_id][i] is not s:
            i += 1
        del self.starts[s.as_id][i]
        del self.ordered[s.as_id][i]

    def _overlaps(self, as_id: int, start: int, end: int, exclude: Slot | None) -> bool:
        i = bisect.bisect_left(self.starts[as_id], end) - 1
        while i >= 0:
            s = self.ordered[as_id][i]
            if s is exclude:
                i -= 1
                continue
            return s.end_gfn > start
        return False

    def slot_at(self, gpa: int, as_id: int = 0) -> Slot | None:
        gfn = gpa // PAGE
        i = bisect.bisect_right(self.starts[as_id], gfn) - 1
        if i >= 0:
            s = self.ordered[as_id][i]
            if s.end_gfn > gfn:
                return s
        return None

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
        if not _user_ok(addr, n, "w"):
            raise KernelError(errno.EFAULT, "kvm: dirty bitmap buffer")
        self.kernel.write_user(addr, s.dirty.tobytes())
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
        if not _user_ok(addr, nw * 8, "r"):
            raise KernelError(errno.EFAULT, "kvm: clear bitmap buffer")
        mask = np.frombuffer(self.kernel.read_user(addr, nw * 8), dtype="<u8")
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


def _user_ok(addr: int, n: int, perms: str) -> bool:
    """copy_{to,from}_user succeed only over mappings with ``perms`` ("r", "w", "rw"): check
    /proc/self/maps (a PROT_NONE guard page faults even though it is mapped)."""
    if n <= 0:
        return True
    end = addr + n
    cur = addr
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 2)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi > addr and lo < end:
                spans.append((lo, hi, all(p in parts[1] for p in perms)))
    for lo, hi, ok in sorted(spans):
        if hi <= cur:
            continue
        if lo > cur or not ok:
            return False
        cur = hi
        if cur >= end:
            return True
    return cur >= end


# ===============================================================================================
class VcpuFile(MockFile):
    """A vCPU: kvm_run page, x86 registers, a real-mode interpreter for guestcode, a dirty ring."""

    RUN_SIZE = 3 * PAGE
    PIO_OFFSET = PAGE

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile, vid: int) -> None:
        super().__init__(kernel, path)
        vm.get()
        self.vm = vm
        self.id = vid
        self.run_pages = _SharedPages(self.RUN_SIZE, "kvm-run")
        self.run = ffi.cast("struct kvm_run *", self.run_pages.addr)
        self.regs = ffi.new("struct kvm_regs *")
        self.sregs = ffi.new("struct kvm_sregs *")
        self._reset_state()
        self.ring: _SharedPages | None = None
        self.ring_entries: np.ndarray | None = None
        self.ring_dirty_index = 0
        self.ring_reset_index = 0
        if vm.dirty_ring_size:
            self.ring = _SharedPages(vm.dirty_ring_size, "kvm-dirty-ring")
            self.ring_entries = np.frombuffer(self.ring.map, dtype=[("flags", "<u4"), ("slot", "<u4"),
                                                                    ("offset", "<u8")])

    def _reset_state(self) -> None:
        s = self.sregs
        for seg in (s.ds, s.es, s.fs, s.gs, s.ss):
            seg.base, seg.limit, seg.selector, seg.type, seg.present, seg.s = 0, 0xFFFF, 0, 3, 1, 1
        s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.present, s.cs.s = 0xFFFF0000, 0xFFFF, 0xF000, 11, 1, 1
        s.tr.type, s.tr.present, s.tr.limit = 11, 1, 0xFFFF
        s.ldt.type, s.ldt.present, s.ldt.limit = 2, 1, 0xFFFF
        s.gdt.limit = s.idt.limit = 0xFFFF
        s.cr0 = 0x60000010
        s.apic_base = 0xFEE00900
        self.regs.rip = 0xFFF0
        self.regs.rflags = 2

    # -- registers ------------------------------------------------------------------------------
    @handles("KVM_GET_REGS")
    def get_regs(self, arg: Any) -> int:
        ffi.memmove(_ptr(arg, "struct kvm_regs"), self.regs, ffi.sizeof("struct kvm_regs"))
        return 0

    @handles("KVM_SET_REGS")
    def set_regs(self, arg: Any) -> int:
        ffi.memmove(self.regs, _ptr(arg, "struct kvm_regs"), ffi.sizeof("struct kvm_regs"))
        return 0

    @handles("KVM_GET_SREGS")
    def get_sregs(self, arg: Any) -> int:
        ffi.memmove(_ptr(arg, "struct kvm_sregs"), self.sregs, ffi.sizeof("struct kvm_sregs"))
        return 0

    @handles("KVM_SET_SREGS")
    def set_sregs(self, arg: Any) -> int:
        ffi.memmove(self.sregs, _ptr(arg, "struct kvm_sregs"), ffi.sizeof("struct kvm_sregs"))
        return 0

    # -- mmap -----------------------------------------------------------------------------------
    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        ring_off = I.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE
        if offset >= ring_off and self.ring is not None:
            if not flags & mmap.MAP_SHARED or prot & mmap.PROT_EXEC:
                raise KernelError(errno.EINVAL, "kvm: the dirty ring must be mapped shared, not exec")
            return self.ring.user_mmap(length, offset - ring_off, flags, prot)
        return self.run_pages.user_mmap(length, offset, flags, prot)

    # -- guest memory ---------------------------------------------------------------------------
    def _mapped(self, s: Slot) -> None:
        key = (s.hva, s.npages)
        if key not in self._checked:
            if not _user_ok(s.hva, s.npages * PAGE, "r"):
                raise KernelError(errno.EFAULT, "kvm: memslot hva not mapped")
            self._checked.add(key)

    def _fetch(self, gpa: int, n: int) -> bytes | None:
        s = self.vm.slot_at(gpa)
        if s is None or s.gmem is not None:
            return None
        self._mapped(s)
        return self.kernel.read_user(s.hva + gpa - s.base_gfn * PAGE, n)

    def _store(self, gpa: int, value: int) -> int | None:
        """Guest write of one byte; returns an exit reason or None when done in the kernel."""
        s = self.vm.slot_at(gpa)
        if s is None or s.flags & I.KVM_MEM_READONLY or s.gmem is not None:
            if self.vm._ioeventfd_hit("mmio", gpa, 1, value):
                return None
            m = self.run.mmio
            m.phys_addr, m.len, m.is_write = gpa, 1, 1
            m.data[0] = value
            return I.KVM_EXIT_MMIO
        self._mapped(s)
        page = gpa // PAGE - s.base_gfn
        self.kernel.write_user(s.hva + gpa - s.base_gfn * PAGE, bytes([value]))
        if s.flags & I.KVM_MEM_LOG_DIRTY_PAGES:
            if self.vm.dirty_ring_size:
                if page not in s.ring_dirty:
                    s.ring_dirty.add(page)
                    self._ring_push(s.as_id << 16 | s.id, page)
            elif s.dirty is not None:
                s.mark(page)
        return None

    def _ring_full(self) -> bool:
        assert self.ring_entries is not None
        return self.ring_dirty_index - self.ring_reset_index >= self.ring_entries.size - DIRTY_RING_RSVD_ENTRIES

    def _ring_push(self, slot: int, offset: int) -> None:
        assert self.ring_entries is not None
        i = self.ring_dirty_index % self.ring_entries.size
        self.ring_entries["slot"][i] = slot
        self.ring_entries["offset"][i] = offset
        self.ring_entries["flags"][i] = I.KVM_DIRTY_GFN_F_DIRTY
        self.ring_dirty_index += 1

    def ring_reset(self) -> int:
        if self.ring_entries is None:
            return 0
        n = 0
        while self.ring_reset_index < self.ring_dirty_index:
            i = self.ring_reset_index % self.ring_entries.size
            if not int(self.ring_entries["flags"][i]) & I.KVM_DIRTY_GFN_F_RESET:
                break
            slot, off = int(self.ring_entries["slot"][i]), int(self.ring_entries["offset"][i])
            s = self.vm.slots.get(slot)
            if s is not None:
                s.ring_dirty.discard(off)
            self.ring_entries["flags"][i] = 0
            self.ring_reset_index += 1
            n += 1
        return n

    # -- KVM_RUN --------------------------------------------------------------------------------
    @handles("KVM_RUN")
    def run_vcpu(self, arg: Any) -> int:
        if self.run.immediate_exit:
            raise KernelError(errno.EINTR)
        self._checked: set[tuple[int, int]] = set()
        if self.ring_entries is not None and self._ring_full():
            self.run.exit_reason = I.KVM_EXIT_DIRTY_RING_FULL
            return 0
        for _ in range(1_000_000):
            reason = self._step()
            if reason is not None:
                self.run.exit_reason = reason
                return 0
        self.run.exit_reason = I.KVM_EXIT_INTR
        return 0

    def _internal_error(self) -> int:
        self.run.internal.suberror = 1  # KVM_INTERNAL_ERROR_EMULATION
        self.run.internal.ndata = 0
        return I.KVM_EXIT_INTERNAL_ERROR

    def _step(self) -> int | None:
        s, r = self.sregs, self.regs
        if s.cr0 & 1:  # the mock only runs real-mode guestcode
            return self._internal_error()
        ip = int(r.rip) & 0xFFFF
        pc = int(s.cs.base) + ip
        code = self._fetch(pc, 1)
        if code is None:
            return self._internal_error()
        op = code[0]

        def imm(n: int, at: int = 1) -> int:
            b = self._fetch(pc + at, n)
            if b is None:
                raise _Fault()
            return int.from_bytes(b, "little")

        try:
            if op == 0xF4:  # hlt
                r.rip = ip + 1
                return I.KVM_EXIT_HLT
            if op == 0x90:
                r.rip = ip + 1
                return None
            if op == 0xB8:  # mov ax, imm16
                r.rax = (int(r.rax) & ~0xFFFF) | imm(2)
                r.rip = ip + 3
                return None
            if op == 0xB0:  # mov al, imm8
                r.rax = (int(r.rax) & ~0xFF) | imm(1)
                r.rip = ip + 2
                return None
            if op == 0x8E and imm(1) == 0xD8:  # mov ds, ax
                sel = int(r.rax) & 0xFFFF
                s.ds.selector, s.ds.base = sel, sel << 4
                r.rip = ip + 2
                return None
            if op == 0xC6 and imm(1) == 0x06:  # mov byte [disp16], imm8
                gpa = int(s.ds.base) + imm(2, 2)
                value = imm(1, 4)
                r.rip = ip + 5
                return self._store(gpa, value)
            if op == 0xE6:  # out imm8, al
                port = imm(1)
                al = int(r.rax) & 0xFF
                r.rip = ip + 2
                if self.vm._ioeventfd_hit("pio", port, 1, al):
                    return None
                io = self.run.io
                io.direction, io.size, io.port, io.count, io.data_offset = I.KVM_EXIT_IO_OUT, 1, port, 1, self.PIO_OFFSET
                self.kernel.write_user(self.run_pages.addr + self.PIO_OFFSET, bytes([al]))
                return I.KVM_EXIT_IO
        except _Fault:
            return self._internal_error()
        return self._internal_error()

    def release(self) -> None:
        self.run_pages.close()
        if self.ring is not None:
            self.ring_entries = None
            self.ring.close()
        self.vm.vcpus.pop(self.id, None)
        self.vm.put()


class _Fault(Exception):
    pass


# ===============================================================================================
class KvmVfioDeviceFile(MockFile):
    """The KVM VFIO device (virt/kvm/vfio.c)."""

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.files: list[MockFile] = []

    def _attr(self, arg: Any) -> Any:
        return _ptr(arg, "struct kvm_device_attr")

    @handles("KVM_SET_DEVICE_ATTR")
    def set_attr(self, arg: Any) -> int:
        a = self._attr(arg)
        if int(a.group) != I.KVM_DEV_VFIO_FILE or int(a.attr) not in (I.KVM_DEV_VFIO_FILE_ADD,
                                                                       I.KVM_DEV_VFIO_FILE_DEL):
            raise KernelError(errno.ENXIO, "kvm-vfio: unknown attribute")
        addr = int(a.addr)
        if not _user_ok(addr, 4, "r"):
            raise KernelError(errno.EFAULT, "kvm-vfio: bad attribute address")
        fd = int.from_bytes(self.kernel.read_user(addr, 4), "little", signed=True)
        f = _fd_kind(self.kernel, fd)
        if f is None:
            raise KernelError(errno.EBADF, f"kvm-vfio: fd {fd} not open")
        if int(a.attr) == I.KVM_DEV_VFIO_FILE_ADD:
            if not _is_vfio_file(f):
                raise KernelError(errno.EINVAL, f"kvm-vfio: fd {fd} is not a VFIO file")
            assert isinstance(f, MockFile)
            if any(x is f for x in self.files):
                raise KernelError(errno.EEXIST, "kvm-vfio: file already added")
            self.files.append(f.get())
            kvm_set = getattr(f, "set_kvm", None)
            if callable(kvm_set):
                kvm_set(self.vm)
            return 0
        for x in self.files:
            if x is f:
                self.files.remove(x)
                kvm_set = getattr(f, "set_kvm", None)
                if callable(kvm_set):
                    kvm_set(None)
                x.put()
                return 0
        raise KernelError(errno.ENOENT, "kvm-vfio: file not added")

    @handles("KVM_GET_DEVICE_ATTR")
    def get_attr(self, arg: Any) -> int:
        raise KernelError(errno.EPERM, "kvm-vfio: no readable attributes")

    @handles("KVM_HAS_DEVICE_ATTR")
    def has_attr(self, arg: Any) -> int:
        a = self._attr(arg)
        if int(a.group) == I.KVM_DEV_VFIO_FILE and int(a.attr) in (I.KVM_DEV_VFIO_FILE_ADD,
                                                                    I.KVM_DEV_VFIO_FILE_DEL):
            return 0
        raise KernelError(errno.ENXIO)

    def release(self) -> None:
        for f in self.files:
            f.put()
        self.files.clear()
        self.vm.vfio_device = None
        self.vm.put()


class GuestMemfdFile(MockFile):
    """A guest_memfd: private memory of one VM (no host access in the mock)."""

    def __init__(self, kernel: MockKernel, path: str, vm: VmFile, size: int) -> None:
        super().__init__(kernel, path)
        self.vm = vm
        self.size = size

    def release(self) -> None:
        self.vm.put()


__all__ = ["KvmConfig", "KvmState", "install", "state"]
