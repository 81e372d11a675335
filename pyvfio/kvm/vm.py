"""The KVM VM fd (KVM_CREATE_VM): capabilities, memslots, dirty logs, vCPUs, devices, eventfds.

Layering inside this module: the *raw* methods of :class:`Vm` (``set_user_memory_region``,
``get_dirty_log``, ``clear_dirty_log``...) issue one ioctl each with exactly the arguments given,
so the kernel's own errno rules can be observed; the *managed* API (:meth:`Vm.add_memslot` and
:class:`~pyvfio.kvm.memslot.MemSlot`) validates everything the kernel would refuse *before* the
syscall, raising a ValueError subclass (:class:`~pyvfio.errors.AlignmentError`,
:class:`~pyvfio.errors.RangeError`, :class:`~pyvfio.errors.OverlapError`,
:class:`~pyvfio.errors.ArgumentError`) whose message says why, and keeps slot ids, address spaces
and guest-physical ranges in its own bookkeeping.

Example (mock kernel)::

    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.kvm import Kvm, GuestMemory
    >>> be = MockBackend()
    >>> with Kvm(backend=be) as kvm, kvm.create_vm() as vm:
    ...     mem = GuestMemory.anonymous(1 << 20, backend=be)
    ...     slot = vm.add_memslot(mem, gpa=0x100000, log_dirty=True)
    ...     (slot.id, slot.npages, slot.get_dirty_log().count())
    (0, 256, 0)
"""

from __future__ import annotations

import functools
import heapq
import threading
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Iterator, ParamSpec, TypeVar

from .. import ioctls as I
from ..core.fd import FdObject, raise_first
from ..errors import AlignmentError, ArgumentError, OverlapError, RangeError, StateError, UnsupportedError
from ..uapi import ffi
from ..uapi.names import KVM_CAPS
from ..uapi.args import as_int, check_int, fill, new, struct_error, u32, u64
from ..util.intervals import SortedIndex
from .device import KvmDevice, KvmVfioDevice
from .eventfd import IoEventFd, IrqFd
from .memory import GuestMemory
from .memslot import (
    _GMEM,
    _LOG,
    _MAX_GPA,
    _RO,
    _SET_REGION,
    KVM_MEM_MAX_NR_PAGES,
    PAGE_SHIFT,
    PAGE_SIZE,
    TASK_SIZE,
    MemFlag,
    MemSlot,
    check_gpa_limit,
    check_range,
)
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .system import Kvm

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(fn: "Callable[Concatenate[Vm, _P], _R]") -> "Callable[Concatenate[Vm, _P], _R]":
    """Run the method under its VM's :attr:`Vm.lock`."""
    @functools.wraps(fn)
    def under_lock(self: "Vm", *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return fn(self, *args, **kwargs)
    return under_lock

class Vm(FdObject):
    """A KVM VM fd: capabilities, memslots, dirty logs, vCPUs, devices, ioeventfd/irqfd.

    Made by :meth:`Kvm.create_vm`. Closing it closes its vCPUs, devices and eventfd bindings
    and forgets its memslots (the kernel frees them with the VM).

    Threads: the memslot and dirty-log calls may run concurrently from several threads:
    ``set_user_memory_region[2]``, ``get_dirty_log``, ``clear_dirty_log``, ``add_memslot`` and
    every :class:`MemSlot` method (``move``, ``set_dirty_logging``, ``delete``, the dirty-log
    calls). They share one ioctl struct each and the slot bookkeeping, so each holds the VM's
    lock (:attr:`lock`, re-entrant, one per VM) from slot-id allocation and the overlap check
    through the struct fill and the ioctl to the bookkeeping update: they run one at a time
    per VM, in some order, never interleaved (different VMs do not contend). Also free to run
    concurrently with everything: the vCPUs (:meth:`Vcpu.run`, each in its own thread; the
    kernel orders memslot updates against running vCPUs), ``check_extension`` (a cache of
    immutable answers) and the bindings' ``read``/``trigger``. ``create_vcpu``/
    ``create_device``/``ioeventfd``/``irqfd`` update the child lists unlocked: one thread at a
    time. ``close()`` runs alone.
    """

    def __init__(self, kvm: Kvm, fd: int, vm_type: int = 0) -> None:
        self._adopt_fd(kvm.backend, fd, "anon_inode:kvm-vm")
        self.kvm = kvm
        self.vm_type = vm_type
        self._caps: dict[int, int] = {}
        #: Serialises the memslot and dirty-log calls (see Threads).
        self.lock = threading.RLock()
        # bookkeeping: (as_id, id) -> MemSlot; per address space a sorted list of starts and
        # the slots in the same order (for O(log n) overlap checks).
        self._slots: dict[int, MemSlot] = {}
        self._index_of: list[SortedIndex[MemSlot]] = []
        self._free_ids: list[list[int]] = []
        self._next_id: list[int] = []
        self._region = ffi.new("struct kvm_userspace_memory_region *")
        self._region2: Any = None
        self._dirty_log = ffi.new("struct kvm_dirty_log *")
        self._clear_log = ffi.new("struct kvm_clear_dirty_log *")
        self.manual_protect = 0  # KVM_DIRTY_LOG_* options enabled
        self.dirty_ring_bytes = 0
        self.dirty_ring_acq_rel = False
        self.vcpus: dict[int, Vcpu] = {}
        self._children: list[Any] = []  # devices, ioeventfds, irqfds, guest memfds
        self._irqchip = False
        self._valid: int | None = None
        self._limits: tuple[int, int, int] | None = None

    # -- capabilities ------------------------------------------------------------------------
    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (cached): 0 when absent.

        ``cap``: a number or a name in any case ("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
        "manual_dirty_log_protect2"); ArgumentError for an unknown name, listing the valid ones.
        """
        cap = KVM_CAPS.resolve(cap)
        v = self._caps.get(cap)
        if v is None:
            v = self._caps[cap] = self._ioctl(I.KVM_CHECK_EXTENSION, cap)
        return v

    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM fd (``cap`` a number or name, as for check_extension).
        EINVAL: unknown cap, bad args or flags, wrong state."""
        if len(args) > 4:
            raise ArgumentError("KVM_ENABLE_CAP takes at most 4 arguments")
        c = new("struct kvm_enable_cap", cap=u32(KVM_CAPS.resolve(cap), "KVM_ENABLE_CAP cap"),
                flags=u32(flags, "KVM_ENABLE_CAP flags"))
        for i, a in enumerate(args):
            c.args[i] = u64(a, f"KVM_ENABLE_CAP args[{i}]")
        self._ioctl(I.KVM_ENABLE_CAP, c)
        self._caps.clear()
        self._valid = None
        self._limits = None

    @property
    def max_slots(self) -> int:
        """User memslots per address space (KVM_CAP_NR_MEMSLOTS; 32764 on x86)."""
        return self.check_extension(I.KVM_CAP_NR_MEMSLOTS) or 32

    @property
    def address_spaces(self) -> int:
        """Number of memslot address spaces (KVM_CAP_MULTI_ADDRESS_SPACE, 1 if absent)."""
        return max(1, self.check_extension(I.KVM_CAP_MULTI_ADDRESS_SPACE))

    @property
    def has_readonly_mem(self) -> bool:
        return bool(self.check_extension(I.KVM_CAP_READONLY_MEM))

    def enable_manual_dirty_log_protect(self, *, initially_set: bool = False) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): GET no longer clears; CLEAR does.

        ``initially_set``: new logging slots start all-dirty (KVM_DIRTY_LOG_INITIALLY_SET).
        UnsupportedError when the kernel lacks the cap or the option.
        """
        caps = self.check_extension(I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
        want = I.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (I.KVM_DIRTY_LOG_INITIALLY_SET if initially_set else 0)
        if not caps or want & ~caps:
            raise UnsupportedError(op="KVM_ENABLE_CAP", path=self.path,
                                   hint=f"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports {caps:#x}, need {want:#x}")
        self.enable_cap(I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, want)
        self.manual_protect = want

    def enable_dirty_ring(self, size_bytes: int, *, acq_rel: bool = False) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING[_ACQ_REL]): per-vCPU rings of ``size_bytes``.

        Must precede the first vCPU. ``size_bytes`` is a power of two, at least a page, at
        most what the cap reports. Afterwards GET/CLEAR_DIRTY_LOG answer ENXIO; harvest
        :attr:`Vcpu.dirty_ring` and call :meth:`reset_dirty_rings`.
        """
        cap = I.KVM_CAP_DIRTY_LOG_RING_ACQ_REL if acq_rel else I.KVM_CAP_DIRTY_LOG_RING
        limit = self.check_extension(cap)
        if not limit:
            raise UnsupportedError(op="KVM_ENABLE_CAP", path=self.path, hint="no dirty ring on this kernel")
        if self.vcpus:
            raise StateError("the dirty ring must be enabled before the first vCPU is created")
        if self.dirty_ring_bytes:
            raise StateError("the dirty ring is already enabled (once per VM)")
        if size_bytes < PAGE_SIZE or size_bytes & (size_bytes - 1):
            raise ArgumentError(f"dirty ring size {size_bytes} must be a power of two >= {PAGE_SIZE}")
        if size_bytes > limit:
            raise RangeError(f"dirty ring size {size_bytes} exceeds the kernel's {limit}")
        self.enable_cap(cap, size_bytes)
        self.dirty_ring_bytes = size_bytes
        self.dirty_ring_acq_rel = acq_rel

    # -- raw ioctls (no validation: the kernel's rules apply) --------------------------------
    @_locked
    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        """KVM_SET_USER_MEMORY_REGION, raw: create (new slot), modify, or delete (size 0).

        ``slot`` is ``as_id << 16 | id``. EINVAL: bad flags, unaligned gpa/size/hva, id or
        as_id out of range, size/hva/READONLY change, delete of a missing slot; EEXIST: overlap.
        """
        r = self._region
        try:
            r.slot = slot
            r.flags = flags
            r.guest_phys_addr = gpa
            r.memory_size = size
            r.userspace_addr = hva
        except (OverflowError, TypeError) as e:
            raise struct_error(r, dict(slot=slot, flags=flags, guest_phys_addr=gpa,
                                       memory_size=size, userspace_addr=hva), e) from None
        self._ioctl(I.KVM_SET_USER_MEMORY_REGION, r)

    @_locked
    def set_user_memory_region2(self, slot: int, flags: int, gpa: int, size: int, hva: int,
                                guest_memfd: int = 0, guest_memfd_offset: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION2, raw (adds guest_memfd + offset; KVM_CAP_USER_MEMORY2)."""
        if self._region2 is None:
            self._region2 = ffi.new("struct kvm_userspace_memory_region2 *")
        fill(self._region2, slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
             userspace_addr=hva, guest_memfd=guest_memfd, guest_memfd_offset=guest_memfd_offset)
        r = self._region2
        self._ioctl(I.KVM_SET_USER_MEMORY_REGION2, r)

    @_locked
    def get_dirty_log(self, slot: int, bitmap_addr: int) -> None:
        """KVM_GET_DIRTY_LOG, raw: the kernel writes ALIGN(npages, 64) / 8 bytes at ``bitmap_addr``.

        ENOENT: no such slot or no logging; EINVAL: id out of range; ENXIO: dirty ring in use;
        EFAULT: the buffer is not writable for the whole bitmap size.
        """
        d = fill(self._dirty_log, slot=slot)
        d.dirty_bitmap = ffi.cast("void *", u64(bitmap_addr, "dirty bitmap address"))
        self._ioctl(I.KVM_GET_DIRTY_LOG, d)

    @_locked
    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, bitmap_addr: int) -> None:
        """KVM_CLEAR_DIRTY_LOG, raw: clear the pages whose bit is set (bit 0 = ``first_page``).

        EINVAL: first_page not a multiple of 64, num_pages not a multiple of 64 without reaching
        the slot end, or a range beyond the slot; ENOENT: no such slot or no logging; ENXIO: ring.
        """
        c = fill(self._clear_log, slot=slot, first_page=first_page, num_pages=num_pages)
        c.dirty_bitmap = ffi.cast("void *", u64(bitmap_addr, "dirty bitmap address"))
        self._ioctl(I.KVM_CLEAR_DIRTY_LOG, c)

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: re-protect harvested ring entries; returns how many were reset."""
        return self._ioctl(I.KVM_RESET_DIRTY_RINGS, 0)

    # -- managed memslots ---------------------------------------------------------------------
    def _as(self, as_id: int) -> None:
        while len(self._index_of) <= as_id:
            self._index_of.append(SortedIndex())
            self._free_ids.append([])
            self._next_id.append(0)

    def _valid_flags(self) -> int:
        if self._valid is not None:
            return self._valid
        v = int(MemFlag.LOG_DIRTY_PAGES)
        if self.has_readonly_mem:
            v |= MemFlag.READONLY
        if self.check_extension(I.KVM_CAP_GUEST_MEMFD) and self.check_extension(I.KVM_CAP_USER_MEMORY2):
            v |= MemFlag.GUEST_MEMFD
        self._valid = int(v)
        return self._valid

    def _check_flags(self, flags: int) -> None:
        valid = self._valid if self._valid is not None else self._valid_flags()
        if flags & ~valid:
            raise ArgumentError(
                f"memslot flags {flags:#x} not allowed here: valid are {MemFlag(valid)!r}"
                + ("" if self.has_readonly_mem or not flags & MemFlag.READONLY
                   else " (this architecture has no KVM_CAP_READONLY_MEM)"))
        if flags & _GMEM and flags & _LOG:
            raise ArgumentError("dirty logging of guest_memfd (private) memory is not supported")

    def _overlap(self, as_id: int, gpa: int, end: int, exclude: "MemSlot | None" = None) -> "MemSlot | None":
        # slots never overlap each other, so among those starting below `end` the nearest
        # one (skipping `exclude`) has the highest end: it alone decides
        for s in self._index_of[as_id].below(end):
            if s is exclude:
                continue
            return s if s.gpa + s.size > gpa else None
        return None

    def _index(self, s: "MemSlot") -> None:
        self._index_of[s.as_id].insert(s.gpa, s)

    def _unindex(self, s: "MemSlot") -> None:
        self._index_of[s.as_id].remove(s.gpa, s)

    def add_memslot(self, memory: Any = None, gpa: int | None = None, size: int | None = None, *,
                    hva: int | None = None, offset: int = 0, slot: int | None = None, as_id: int = 0,
                    log_dirty: bool = False, readonly: bool = False,
                    guest_memfd: Any = None, guest_memfd_offset: int = 0) -> "MemSlot":
        """Map ``size`` bytes of ``memory`` (from ``offset``) at guest physical ``gpa``.

        Issues KVM_SET_USER_MEMORY_REGION (or ...REGION2 with ``guest_memfd``). ``memory`` is a
        :class:`GuestMemory` or a buffer object with ``.addr``/``.size`` (a DmaBuffer, a BAR's
        RegionMapping), kept alive (and a DmaBuffer pinned) while mapped. A raw host address is
        given only as the keyword ``hva=`` (with ``size``; the caller keeps it mapped): a plain
        int as ``memory`` is refused, since ``add_memslot(64 * MiB, 0, 4096)`` reads as a size.
        ``slot`` defaults to the lowest free id of ``as_id``.

        Refused before the syscall: unaligned gpa/size/hva (AlignmentError), empty, oversized,
        beyond the guest or user address space, or outside ``memory`` (RangeError), a slot id or
        address space out of range or in use, bad flags, an int ``memory`` (ArgumentError), a
        guest-physical overlap with another slot of the address space (OverlapError).

        Safety: the guest can read and write the memory as long as the slot exists.
        """
        if self._fd < 0:
            self.fileno()  # StateError
        if gpa is None:
            raise ArgumentError("add_memslot needs gpa= (the guest physical address)")
        if isinstance(memory, int) and not isinstance(memory, bool):
            raise ArgumentError(
                f"add_memslot({memory:#x}, ...): a plain int is not host memory; pass a GuestMemory "
                "or a buffer (DmaBuffer), or a raw host address as the keyword hva= (with size=)")
        if memory is not None and hva is not None:
            raise ArgumentError("give memory or hva=, not both")
        gpa = u64(gpa, "memslot gpa")
        offset = as_int(offset, "memslot offset")
        as_id = check_int(as_id, "address space", 0, 0xFFFF)
        if slot is not None:
            slot = check_int(slot, "slot id", 0, 0xFFFF)
        if size is not None:
            size = as_int(size, "memslot size")
        if memory is not None and not isinstance(memory, GuestMemory):
            memory = GuestMemory.borrow(memory, backend=self.backend)
        if isinstance(memory, GuestMemory):
            if memory.closed:
                memory._check_open()
            msize = memory.size
            if size is None:
                size = msize - offset
            if offset % PAGE_SIZE:
                raise AlignmentError(f"offset {offset:#x} into the memory is not page aligned")
            if offset < 0 or offset + size > msize:
                raise RangeError(f"{offset:#x}+{size:#x} is outside the {msize:#x}-byte memory")
            hva = memory.addr + offset
            keep: GuestMemory | None = memory
        else:
            if hva is None:
                raise ArgumentError("add_memslot needs host memory: a GuestMemory, a buffer, or hva=")
            if size is None:
                raise ArgumentError("size is required with hva= (a raw host address)")
            hva = as_int(hva, "hva (a raw host address)") + offset
            keep = None
        flags = (_LOG if log_dirty else 0) | (_RO if readonly else 0)
        gmem_fd = 0
        if guest_memfd is not None:
            flags |= _GMEM
            gmem_fd = guest_memfd if isinstance(guest_memfd, int) else guest_memfd.fileno()
            if not self.check_extension(I.KVM_CAP_USER_MEMORY2) or not self.check_extension(I.KVM_CAP_GUEST_MEMFD):
                raise UnsupportedError(op="KVM_SET_USER_MEMORY_REGION2", path=self.path,
                                       hint="KVM_CAP_USER_MEMORY2/KVM_CAP_GUEST_MEMFD absent")
            if guest_memfd_offset % PAGE_SIZE:
                raise AlignmentError(f"guest_memfd offset {guest_memfd_offset:#x} is not page aligned")
        limits = self._limits
        if limits is None:
            limits = self._limits = (self.max_slots, self.address_spaces, self._valid_flags())
        max_slots, nspaces, valid = limits
        if as_id and not 0 <= as_id < nspaces:
            raise RangeError(f"address space {as_id} out of range: this VM has {nspaces}")
        if flags & ~valid or (flags & _GMEM and flags & _LOG):
            self._check_flags(flags)  # raises, saying why
        if (size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE or hva % PAGE_SIZE
                or size >> PAGE_SHIFT > KVM_MEM_MAX_NR_PAGES or hva + size > TASK_SIZE):
            check_range(gpa, size, hva)  # raises, saying why
        with self.lock:  # id allocation, overlap check, struct fill, ioctl, bookkeeping
            if as_id >= len(self._index_of):
                self._as(as_id)
            if slot is None:
                slot_id = self._alloc_id(as_id)
            else:
                if not 0 <= slot < max_slots:
                    raise RangeError(f"slot id {slot} out of range 0..{max_slots - 1}")
                if (as_id << 16 | slot) in self._slots:
                    raise ArgumentError(f"slot {slot} of address space {as_id} is in use")
                slot_id = slot
            key = as_id << 16 | slot_id
            try:
                other = self._overlap(as_id, gpa, gpa + size)
                if other is not None:
                    raise OverlapError(f"guest range {gpa:#x}+{size:#x} overlaps slot {other.id} "
                                       f"({other.gpa:#x}+{other.size:#x})")
                if gpa + size > _MAX_GPA:
                    check_gpa_limit(gpa, size)
                if flags & _GMEM:
                    self.set_user_memory_region2(key, flags, gpa, size, hva, gmem_fd, guest_memfd_offset)
                else:
                    r = self._region
                    r.slot = key
                    r.flags = flags
                    r.guest_phys_addr = gpa
                    r.memory_size = size
                    r.userspace_addr = hva
                    self.backend.ioctl(self._fd, _SET_REGION, r)
            except BaseException:
                if slot is None:
                    self._release_id(as_id, slot_id)
                raise
            s = MemSlot(self, slot_id, as_id, gpa, size, hva, flags, keep, guest_memfd, guest_memfd_offset)
            self._slots[key] = s
            self._index_of[as_id].insert(s.gpa, s)
            if keep is not None:
                keep._use()
            return s

    def _alloc_id(self, as_id: int) -> int:
        free = self._free_ids[as_id]
        while free:
            i = heapq.heappop(free)
            if (as_id << 16 | i) not in self._slots:
                return i
        i = self._next_id[as_id]
        while (as_id << 16 | i) in self._slots:
            i += 1
        limit = self._limits[0] if self._limits is not None else self.max_slots
        if i >= limit:
            raise RangeError(f"all {limit} memslots of address space {as_id} are in use")
        self._next_id[as_id] = i + 1
        return i

    def _release_id(self, as_id: int, slot_id: int) -> None:
        if slot_id == self._next_id[as_id] - 1:
            self._next_id[as_id] = slot_id
        else:
            heapq.heappush(self._free_ids[as_id], slot_id)

    def _forget(self, s: "MemSlot") -> None:
        del self._slots[s.slot]
        self._unindex(s)
        self._release_id(s.as_id, s.id)
        if s.memory is not None:
            s.memory._unuse()

    @property
    def memslots(self) -> list["MemSlot"]:
        """Live memslots, by address space then gpa."""
        return [s for index in self._index_of for s in index]

    def memslot(self, slot: int, as_id: int = 0) -> "MemSlot":
        """The live MemSlot with this id (KeyError if none)."""
        return self._slots[as_id << 16 | slot]

    def find_memslot(self, gpa: int, as_id: int = 0) -> "MemSlot | None":
        """The slot containing guest physical address ``gpa`` (None if unmapped)."""
        if as_id >= len(self._index_of):
            return None
        return self._overlap(as_id, gpa, gpa + 1)

    def __iter__(self) -> Iterator["MemSlot"]:
        return iter(self.memslots)

    # -- vCPUs, devices, eventfds, guest_memfd -----------------------------------------------
    def create_vcpu(self, vcpu_id: int | None = None) -> "Vcpu":
        """KVM_CREATE_VCPU and mmap of its kvm_run. EEXIST: id in use; EINVAL: id too large."""
        if vcpu_id is None:
            vcpu_id = 0
            while vcpu_id in self.vcpus:
                vcpu_id += 1
        vcpu_id = u32(vcpu_id, "vcpu id")
        fd = self._ioctl(I.KVM_CREATE_VCPU, vcpu_id)
        self.backend.label(fd, f"anon_inode:kvm-vcpu:{vcpu_id}")
        v = Vcpu(self, fd, vcpu_id)
        self.vcpus[vcpu_id] = v
        return v

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP (x86: PIC + IOAPIC in the kernel; needed for irqfd)."""
        self._ioctl(I.KVM_CREATE_IRQCHIP, 0)
        self._irqchip = True

    def create_device(self, dev_type: int, *, test: bool = False) -> "KvmDevice | None":
        """KVM_CREATE_DEVICE. With ``test`` only asks whether the type exists (returns None).

        ENODEV: unknown type; EBUSY: a second VFIO device (one per VM); EEXIST: other singletons.
        """
        c = ffi.new("struct kvm_create_device *")
        c.type = int(dev_type)
        c.flags = I.KVM_CREATE_DEVICE_TEST if test else 0
        self._ioctl(I.KVM_CREATE_DEVICE, c)
        if test:
            return None
        fd = int(c.fd)
        cls = KvmVfioDevice if dev_type == I.KVM_DEV_TYPE_VFIO else KvmDevice
        self.backend.label(fd, f"anon_inode:kvm-device-{dev_type}")
        dev = cls(self, fd, int(dev_type))
        self._children.append(dev)
        return dev

    def create_vfio_device(self) -> "KvmVfioDevice":
        """The KVM VFIO pseudo device (KVM_DEV_TYPE_VFIO): FILE_ADD/DEL of VFIO group or device fds."""
        dev = self.create_device(I.KVM_DEV_TYPE_VFIO)
        assert dev is not None
        return dev  # type: ignore[return-value]

    def ioeventfd(self, addr: int, length: int = 4, *, eventfd: int | None = None,
                  datamatch: int | None = None, pio: bool = False) -> "IoEventFd":
        """Register an ioeventfd (KVM_IOEVENTFD): guest writes to ``addr`` signal the eventfd."""
        ev = IoEventFd(self, addr, length, eventfd=eventfd, datamatch=datamatch, pio=pio)
        self._children.append(ev)
        return ev

    def irqfd(self, gsi: int, *, eventfd: int | None = None, resample_fd: int | None = None) -> "IrqFd":
        """Register an irqfd (KVM_IRQFD): signalling the eventfd raises guest interrupt ``gsi``."""
        ev = IrqFd(self, gsi, eventfd=eventfd, resample_fd=resample_fd)
        self._children.append(ev)
        return ev

    def create_guest_memfd(self, size: int, flags: int = 0) -> "GuestMemfd":
        """KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD; UnsupportedError otherwise)."""
        if not self.check_extension(I.KVM_CAP_GUEST_MEMFD):
            raise UnsupportedError(op="KVM_CREATE_GUEST_MEMFD", path=self.path,
                                   hint="KVM_CAP_GUEST_MEMFD is absent on this kernel/VM type")
        if size <= 0 or size % PAGE_SIZE:
            raise AlignmentError(f"guest_memfd size {size:#x} must be a positive multiple of {PAGE_SIZE:#x}")
        g = ffi.new("struct kvm_create_guest_memfd *")
        g.size = size
        g.flags = flags
        fd = self._ioctl(I.KVM_CREATE_GUEST_MEMFD, g)
        self.backend.label(fd, "anon_inode:[kvm-gmem]")
        gm = GuestMemfd(self, fd, size)
        self._children.append(gm)
        return gm

    def _close_children(self) -> None:
        """Close every child (bindings, devices, guest memfds, vCPUs) and forget every memslot,
        whatever fails on the way; then raise the first error (the others as its notes)."""
        errors: list[Exception] = []
        for child in reversed(self._children):
            try:
                child.close()
            except Exception as e:
                errors.append(e)
        self._children.clear()
        for v in list(self.vcpus.values()):
            try:
                v.close()
            except Exception as e:
                errors.append(e)
        self.vcpus.clear()
        with self.lock:
            for s in list(self._slots.values()):
                s._dead()
            self._slots.clear()
            self._index_of.clear()
            self._free_ids.clear()
            self._next_id.clear()
        raise_first(errors, f"closing {self!r}")

    def __repr__(self) -> str:
        return f"<Vm fd={self._fd} slots={len(self._slots)} vcpus={len(self.vcpus)}>"



class GuestMemfd(FdObject):
    """A guest_memfd (KVM_CREATE_GUEST_MEMFD) of ``size`` bytes, usable with memslots' REGION2.

    Threads: only an fd; ``fileno()`` from any thread, ``close()`` once.
    """

    def __init__(self, vm: Vm, fd: int, size: int) -> None:
        self._adopt_fd(vm.backend, fd, "anon_inode:[kvm-gmem]")
        self.vm = vm
        self.size = size
