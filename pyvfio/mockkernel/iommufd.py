"""Mock iommufd: /dev/iommu and the VFIO device cdevs /dev/vfio/devices/vfioN (6.12 rules).

Follows drivers/iommu/iommufd/{main.c,ioas.c,io_pagetable.c,pages.c,device.c,hw_pagetable.c}
and drivers/vfio/device_cdev.c. What user space can tell, with the kernel's errnos:

* Command framing (iommufd_fops_ioctl): ``size`` (the first u32) below the command's minimum →
  EINVAL; bytes past the struct the kernel knows must be zero (E2BIG); the answer is copied back
  over ``min(size, sizeof)``. Reserved fields or unknown flags → EOPNOTSUPP.
* Objects live in one id table per open /dev/iommu (ids from 1). IOMMU_DESTROY: unknown id →
  ENOENT; an object still used (an IOAS under a HWPT, a HWPT with a device attached, a bound
  device) → EBUSY.
* IOAS: a fresh IOAS spans [0, 2^64-1] with alignment 1. Attaching a device narrows it: the
  device's reserved regions (the MSI window) and everything outside the IOMMU aperture become
  reserved (EADDRINUSE if a mapping or an allowed range is there), the alignment becomes the
  IOMMU's smallest page. IOVA_RANGES lists the holes (EMSGSIZE, with ``num_iovas`` set, when the
  array is too small). ALLOW_IOVAS: start >= last or overlapping ranges → EINVAL; intersecting a
  reserved range → EADDRINUSE. MAP: no READABLE/WRITEABLE → EINVAL; length 0 or unaligned →
  EINVAL; FIXED_IOVA unaligned or reserved → EINVAL, overlap → EEXIST; otherwise the kernel picks
  the IOVA (iopt_alloc_iova: first fit above page 0, aligned like the user address up to 2 MiB
  with THP or one page without, inside the allowed ranges if any; ENOSPC when none). UNMAP: iova 0 + length 2^64-1 unmaps all;
  a range cutting a mapping → ENOENT (mappings before it are already gone), nothing inside →
  ENOENT, length 0 → EINVAL; ``length`` is rewritten to the bytes unmapped. COPY maps the pages
  behind a contiguous source range (ENOENT if not fully mapped; EPERM for WRITEABLE over memory
  mapped read-only).
* Pinning and accounting (pages.c): pages are pinned only while the IOAS has a domain (a HWPT),
  at MAP time or when the first domain arrives. Every pin adds to the mm's ``pinned_vm`` (VmPin).
  Without CAP_IPC_LOCK it is also charged to the user's locked_vm (RLIMIT_MODE 0, the default for
  /dev/iommu) or to the mm's locked_vm (RLIMIT_MODE 1, VmLck, what type1 uses), ENOMEM over
  RLIMIT_MEMLOCK. RLIMIT_MODE can be set only with CAP_SYS_RESOURCE (EPERM) and only while the
  context holds no object (EBUSY). A user address that is not mapped gives EFAULT when pinned.
* OPTION HUGE_PAGES (per IOAS): SET 0 raises the alignment to PAGE_SIZE (EINVAL once a domain
  holds mappings), values other than 0/1 → EINVAL.
* GET_HW_INFO: the intel vIOMMU answers type INTEL_VTD with ``struct iommu_hw_info_vtd``; amd and
  virtio answer type NONE. DIRTY_TRACKING capability only where the IOMMU has it (QEMU's do not:
  ``IommufdState.dirty_tracking`` turns it on in the mock). HWPT_ALLOC with DIRTY_TRACKING on an
  IOMMU without it → EOPNOTSUPP; SET_DIRTY_TRACKING/GET_DIRTY_BITMAP on a HWPT allocated without
  it → EOPNOTSUPP.
* The cdev (device_cdev.c): every ioctl but BIND_IOMMUFD → EINVAL before the bind; BIND: bad
  argsz/flags/negative fd → EINVAL, the VFIO group file open → EBUSY (and opening the group while
  a cdev is bound → EBUSY), bound twice → EINVAL, fd not open → EBADF, not /dev/iommu → EBADFD,
  no interrupt remapping without iommufd's allow_unsafe_interrupts → EPERM. ATTACH_IOMMUFD_PT to
  an IOAS reuses or creates an automatic HWPT (destroyed again on detach) and returns its id;
  attaching again replaces. DETACH when not attached is a no-op.

Simulated devices behind a cdev DMA through the IOAS of the HWPT they are attached to: the cdev
hands the vfio-pci device file (:func:`pyvfio.mockkernel.pci.open_device_file`) its own DMA
object (``dma_read``/``dma_write``, the same contract as a VFIO group's), so no change to the
device model was needed. A refused access lands nowhere and logs a DMAR fault to dmesg.
"""

from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass, field
from typing import Any

from .. import ioctls as I
from ..uapi import ffi
from .core import KernelError, MockFile, MockKernel, handles
from .vfio import IommuFault, MockIommuGroup, state as vfio_state

NAME = "iommufd"
PAGE = 4096
U64_MAX = (1 << 64) - 1
ULONG_MAX = U64_MAX
HPAGE = 2 << 20
IOMMU_READ = 1
IOMMU_WRITE = 2
#: The smallest IOMMU page of the mock's vIOMMU (4 KiB | 2 MiB | 1 GiB like intel's).
DEFAULT_PGSIZES = 0x40201000
#: cap_reg / ecap_reg reported for the intel vIOMMU (values of the shape QEMU reports).
VTD_CAP_REG = 0x00D2008C22260286
VTD_ECAP_REG = 0x0000000000F00F5E

ACCOUNT_NONE, ACCOUNT_USER, ACCOUNT_MM = 0, 1, 2


def _cap(bit: int) -> bool:
    from .vfio import _cap_eff

    return bool(_cap_eff() & (1 << bit))


class IommufdState:
    """Per-kernel iommufd state: cdev numbering, accounting counters and vIOMMU knobs."""

    def __init__(self, kernel: MockKernel) -> None:
        self.kernel = kernel
        #: BDF -> N of /dev/vfio/devices/vfioN
        self.cdev_index: dict[str, int] = {}
        #: group number -> bound cdev count (vfio_group.cdev_device_open_cnt)
        self.cdev_open: dict[int, int] = {}
        #: BDFs bound through a cdev (device->open_count of the cdev path)
        self.bound: set[str] = set()
        #: group number -> the ctx owning the group's DMA (iommu_device_claim_dma_owner)
        self.dma_owner: dict[int, Any] = {}
        #: mm->pinned_vm (VmPin) added by the mock, bytes
        self.pinned_vm = 0
        #: user->locked_vm charged by the mock (RLIMIT_MODE 0), bytes
        self.user_locked_vm = 0
        # knobs of the simulated vIOMMU
        #: "intel", "amd" or "virtio" (see :meth:`set_kind`)
        self.kind = "intel"
        self.hw_info_type = I.IOMMU_HW_INFO_TYPE_INTEL_VTD
        #: the driver allocates domains with domain_alloc_user (HWPT_ALLOC flags allowed)
        self.domain_alloc_user = True
        #: the driver completes a domain (its aperture) only at the first attach (virtio-iommu)
        self.finalise_at_attach = False
        self.dirty_tracking = False
        self.pgsize_bitmap = DEFAULT_PGSIZES
        #: CONFIG_TRANSPARENT_HUGEPAGE: kernel-chosen IOVAs keep the user address's alignment
        #: up to 2 MiB (else up to one page; pyvfio's iommufd guest kernel has no THP)
        self.thp = True
        #: CAP_IPC_LOCK / CAP_SYS_RESOURCE of the caller (None: the real process's).
        self.cap_ipc_lock_override: bool | None = None
        self.cap_sys_resource_override: bool | None = None

    def set_kind(self, kind: str) -> None:
        """Behave like QEMU's intel-iommu (GET_HW_INFO INTEL_VTD), amd-iommu (type NONE) or
        virtio-iommu (type NONE, no domain_alloc_user: HWPT_ALLOC flags → EOPNOTSUPP; a domain
        allocated before any attach has an empty aperture, so its IOAS keeps only IOVA 0)."""
        if kind not in ("intel", "amd", "virtio"):
            raise ValueError(f"unknown vIOMMU kind {kind!r}")
        self.kind = kind
        self.hw_info_type = (I.IOMMU_HW_INFO_TYPE_INTEL_VTD if kind == "intel"
                             else I.IOMMU_HW_INFO_TYPE_NONE)
        self.domain_alloc_user = kind != "virtio"
        self.finalise_at_attach = kind == "virtio"

    def cap_ipc_lock(self) -> bool:
        if self.cap_ipc_lock_override is not None:
            return self.cap_ipc_lock_override
        return vfio_state(self.kernel).task.cap_ipc_lock()

    def cap_sys_resource(self) -> bool:
        if self.cap_sys_resource_override is not None:
            return self.cap_sys_resource_override
        return _cap(24)


def state(kernel: MockKernel) -> IommufdState:
    st = kernel.state.get(NAME)
    if st is None:
        raise KernelError(errno.ENODEV, "iommufd subsystem not installed in this mock kernel")
    return st


# ---------------------------------------------------------------------------------------------
# pages, areas, the io_pagetable
# ---------------------------------------------------------------------------------------------


class Pages:
    """iopt_pages: a span of user memory (page granular) shared by areas (COPY shares it)."""

    def __init__(self, uptr: int, length: int, writable: bool, account: int) -> None:
        self.uptr = uptr & ~(PAGE - 1)
        self.npages = (length + (uptr - self.uptr) + PAGE - 1) // PAGE
        self.writable = writable
        self.account = account
        #: page indexes currently pinned (the union over areas filled into a domain)
        self.pinned: set[int] = set()


@dataclass
class Area:
    """iopt_area: [iova, iova+length) mapping ``pages`` from ``start_byte``."""

    iova: int
    length: int
    pages: Pages
    start_byte: int
    prot: int
    filled: bool = False

    @property
    def last(self) -> int:
        return self.iova + self.length - 1

    def vaddr(self, iova: int) -> int:
        return self.pages.uptr + self.start_byte + (iova - self.iova)

    def page_indexes(self) -> range:
        return range(self.start_byte // PAGE, (self.start_byte + self.length - 1) // PAGE + 1)


class Obj:
    """An iommufd object: ``id`` in the context's table and its ``users`` count."""

    kind = "?"

    def __init__(self) -> None:
        self.id = 0
        self.users = 1  # the table's own reference


class Ioas(Obj):
    kind = "IOAS"

    def __init__(self, ctx: "IommufdFile") -> None:
        super().__init__()
        self.ctx = ctx
        self.starts: list[int] = []
        self.areas: list[Area] = []
        #: (start, last, owner)
        self.reserved: list[tuple[int, int, Any]] = []
        self.allowed: list[tuple[int, int]] = []
        self.iova_alignment = 1
        self.disable_large_pages = False
        self.hwpts: list[Hwpt] = []

    # -- lookups --------------------------------------------------------------------------
    def areas_in(self, start: int, last: int) -> list[Area]:
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        out = []
        for a in self.areas[i:]:
            if a.iova > last:
                break
            if a.last >= start:
                out.append(a)
        return out

    def reserved_in(self, start: int, last: int) -> bool:
        return any(s <= last and start <= e for s, e, _o in self.reserved)

    def allowed_in(self, start: int, last: int) -> bool:
        return any(s <= last and start <= e for s, e in self.allowed)

    def holes(self) -> list[tuple[int, int]]:
        """The IOVA ranges not reserved (what IOVA_RANGES reports)."""
        spans = sorted((s, e) for s, e, _o in self.reserved)
        out, cur = [], 0
        for s, e in spans:
            if s > cur:
                out.append((cur, s - 1))
            cur = max(cur, e + 1)
            if cur > ULONG_MAX:
                return out
        if cur <= ULONG_MAX:
            out.append((cur, ULONG_MAX))
        return out

    @property
    def has_domains(self) -> bool:
        return bool(self.hwpts)

    # -- area insertion / removal ---------------------------------------------------------
    def _link(self, a: Area) -> None:
        i = bisect.bisect_left(self.starts, a.iova)
        self.starts.insert(i, a.iova)
        self.areas.insert(i, a)

    def _unlink(self, a: Area) -> None:
        i = self.areas.index(a)
        del self.starts[i]
        del self.areas[i]

    def alloc_iova(self, uptr: int, length: int) -> int:
        """iopt_alloc_iova: first fit, page 0 never used."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise KernelError(errno.EOVERFLOW, "iommufd: alloc_iova length")
        page_offset = uptr % PAGE
        pow2 = 1 << (length - 1).bit_length()
        align = pow2 if not uptr else min(pow2, uptr & -uptr)
        align = min(align, HPAGE if self.ctx.st.thp else PAGE)  # max_alignment
        if align < self.iova_alignment:
            raise KernelError(errno.EINVAL, "iommufd: user address alignment below the IOAS alignment")
        lo_lim, hi_lim = PAGE, ULONG_MAX - PAGE
        allowed = sorted(self.allowed) if self.allowed else [(lo_lim, hi_lim)]
        used = sorted([(s, e) for s, e, _o in self.reserved] + [(a.iova, a.last) for a in self.areas])
        for a_lo, a_hi in allowed:
            a_lo, a_hi = max(a_lo, lo_lim), min(a_hi, hi_lim)
            if a_lo > a_hi:
                continue
            cur = a_lo
            for s, e in used + [(a_hi + 1, a_hi + 1)]:
                if e < cur:
                    continue
                hole_last = min(s - 1, a_hi)
                if hole_last >= cur:
                    start = ((cur + align - 1) & ~(align - 1)) | page_offset
                    if start < hole_last and hole_last - start >= length - 1:
                        return start
                cur = max(cur, e + 1)
                if cur > a_hi:
                    break
        raise KernelError(errno.ENOSPC, "iommufd: no free IOVA block")

    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova."""
        if iova & (self.iova_alignment - 1):
            raise KernelError(errno.EINVAL, f"iommufd: IOVA {iova:#x} not aligned to {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise KernelError(errno.EOVERFLOW, "iommufd: IOVA range wraps")
        if self.reserved_in(iova, last):
            raise KernelError(errno.EINVAL, f"iommufd: IOVA {iova:#x}+{length:#x} is reserved")
        if self.areas_in(iova, last):
            raise KernelError(errno.EEXIST, "")

    def map_pages(self, pieces: list[tuple[Pages, int, int]], length: int, iova: int | None,
                  prot: int) -> int:
        """iopt_map_pages: place ``pieces`` (pages, start_byte, length) at ``iova`` or an
        allocated IOVA, then fill the domains (pin). Returns the IOVA."""
        if length & (self.iova_alignment - 1) or not length:
            raise KernelError(errno.EINVAL, "iommufd: length zero or not aligned")
        first_pages, first_start, _ = pieces[0]
        if iova is None:
            iova = self.alloc_iova(first_pages.uptr + first_start, length)
        else:
            self.check_iova(iova, length)
        new: list[Area] = []
        at = iova
        for pages, start_byte, n in pieces:
            if prot & IOMMU_WRITE and not pages.writable:
                raise KernelError(errno.EPERM, "iommufd: WRITEABLE over read-only pages")
            if (start_byte % PAGE) & (self.iova_alignment - 1):
                raise KernelError(errno.EINVAL, "iommufd: user address not aligned to the IOAS")
            new.append(Area(at, n, pages, start_byte, prot))
            at += n
        for a in new:
            self._link(a)
        if self.has_domains:
            try:
                self.ctx.fill(new)
            except KernelError:
                for a in new:
                    self._unlink(a)
                raise
        return iova

    def unmap_range(self, start: int, last: int) -> tuple[int, int]:
        """iopt_unmap_iova_range: (errno or 0, bytes unmapped)."""
        done = 0
        for a in self.areas_in(start, last):
            if a.iova < start or a.last > last:
                return errno.ENOENT, done
            self.remove_area(a)
            done += a.length
        return 0, done

    def remove_area(self, a: Area) -> None:
        self._unlink(a)
        if a.filled:
            self.ctx.unfill([a])

    def unmap_all(self) -> int:
        return self.unmap_range(0, ULONG_MAX)[1]


class Hwpt(Obj):
    kind = "HWPT_PAGING"

    def __init__(self, ioas: Ioas, group: MockIommuGroup, *, auto: bool, dirty: bool) -> None:
        super().__init__()
        self.ioas = ioas
        self.group = group
        self.auto_domain = auto
        self.dirty_ops = dirty
        self.dirty_tracking = False
        self.dirty: set[int] = set()  # dirty IOVA pages (iova // PAGE)
        #: the domain's geometry when it was added to the IOAS
        self.aperture = group.aperture
        self.devices: list[Idev] = []


class Idev(Obj):
    kind = "DEVICE"

    def __init__(self, ctx: "IommufdFile", entry: Any, cdev: "VfioCdevFile") -> None:
        super().__init__()
        self.ctx = ctx
        self.entry = entry
        self.group: MockIommuGroup = entry.group
        self.cdev = cdev
        self.hwpt: Hwpt | None = None
        self.users += 1  # the driver holds it until unbind


# ---------------------------------------------------------------------------------------------
# /dev/iommu
# ---------------------------------------------------------------------------------------------


def _u32_at(arg: Any, off: int = 0) -> int:
    return int(ffi.cast("uint32_t *", ffi.cast("char *", arg) + off)[0])


class IommufdFile(MockFile):
    """One open /dev/iommu: an iommufd_ctx."""

    def __init__(self, kernel: MockKernel, path: str) -> None:
        super().__init__(kernel, path)
        self.st = state(kernel)
        self.objects: dict[int, Obj] = {}
        self._next_id = 1
        self.account_mode = ACCOUNT_USER
        #: igroup: group number -> Hwpt the group is attached to
        self.group_hwpt: dict[int, Hwpt] = {}

    # -- framing ----------------------------------------------------------------------------
    def _ucmd(self, arg: Any, ctype: str, last: str) -> tuple[Any, int]:
        """copy_struct_from_user: the command as a private struct, and the user's size."""
        if isinstance(arg, int):
            raise KernelError(errno.EFAULT, "iommufd: the argument must point to a struct")
        size = _u32_at(arg)
        known = ffi.sizeof(ctype)
        field_type = ffi.typeof(ctype).fields
        min_size = dict(field_type)[last].offset + ffi.sizeof(dict(field_type)[last].type)
        if size < min_size:
            raise KernelError(errno.EINVAL, f"iommufd: {ctype} size {size} below {min_size}")
        raw = ffi.cast("char *", arg)
        if size > known and any(bytes(ffi.buffer(raw + known, size - known))):
            raise KernelError(errno.E2BIG, f"iommufd: {ctype}: non-zero bytes past the known struct")
        cmd = ffi.new(ctype + " *")
        ffi.memmove(cmd, raw, min(size, known))
        return cmd, size

    @staticmethod
    def _respond(arg: Any, cmd: Any, size: int) -> None:
        ffi.memmove(ffi.cast("char *", arg), cmd, min(size, ffi.sizeof(cmd[0])))

    # -- object table ------------------------------------------------------------------------
    def add(self, obj: Obj) -> int:
        obj.id = self._next_id
        self._next_id += 1
        self.objects[obj.id] = obj
        return obj.id

    def lookup(self, id_: int, kind: "type[Obj] | None" = None) -> Any:
        obj = self.objects.get(id_)
        if obj is None or (kind is not None and not isinstance(obj, kind)):
            raise KernelError(errno.ENOENT, f"iommufd: no {kind.kind if kind else 'object'} {id_}")
        return obj

    def get_ref(self) -> "IommufdFile":
        return MockFile.get(self)  # type: ignore[return-value]

    # -- pinning (pages.c) -------------------------------------------------------------------
    def _charge(self, pages: Pages, npages: int) -> None:
        st = self.st
        task = vfio_state(self.kernel).task
        nbytes = npages * PAGE
        limit = task.rlimit_memlock()
        if pages.account == ACCOUNT_USER:
            if st.user_locked_vm + nbytes > limit // PAGE * PAGE:
                raise KernelError(errno.ENOMEM, f"iommufd: RLIMIT_MEMLOCK ({limit}) exceeded (user locked_vm)")
            st.user_locked_vm += nbytes
        elif pages.account == ACCOUNT_MM:
            if task.locked_vm() + nbytes > limit // PAGE * PAGE:
                raise KernelError(errno.ENOMEM, f"iommufd: RLIMIT_MEMLOCK ({limit}) exceeded (mm locked_vm)")
            task.pinned += nbytes
        st.pinned_vm += nbytes

    def _uncharge(self, pages: Pages, npages: int) -> None:
        nbytes = npages * PAGE
        if pages.account == ACCOUNT_USER:
            self.st.user_locked_vm -= nbytes
        elif pages.account == ACCOUNT_MM:
            vfio_state(self.kernel).task.pinned -= nbytes
        self.st.pinned_vm -= nbytes

    def fill(self, areas: list[Area]) -> None:
        """Pin the areas' pages into the domains (iopt_area_fill_domains); all or nothing."""
        from .type1 import _user_mapped

        done: list[tuple[Area, set[int]]] = []
        try:
            for a in areas:
                if a.filled:
                    continue
                lo = a.vaddr(a.iova) & ~(PAGE - 1)
                hi = (a.vaddr(a.last) | (PAGE - 1)) + 1
                if not _user_mapped(lo, hi - lo):
                    raise KernelError(errno.EFAULT, f"iommufd: user memory of IOVA {a.iova:#x} is not mapped")
                want = set(a.page_indexes()) - a.pages.pinned
                self._charge(a.pages, len(want))
                a.pages.pinned |= want
                a.filled = True
                done.append((a, want))
        except KernelError:
            for a, want in reversed(done):
                a.pages.pinned -= want
                self._uncharge(a.pages, len(want))
                a.filled = False
            raise

    def unfill(self, areas: list[Area]) -> None:
        """Unpin what no other filled area of the same pages still needs."""
        for a in areas:
            if not a.filled:
                continue
            a.filled = False
            still: set[int] = set()
            for ctx_area in self._filled_areas_of(a.pages):
                still |= set(ctx_area.page_indexes())
            gone = set(a.page_indexes()) - still
            gone &= a.pages.pinned
            a.pages.pinned -= gone
            self._uncharge(a.pages, len(gone))

    def _filled_areas_of(self, pages: Pages) -> list[Area]:
        out = []
        for ctx in _live_contexts(self.kernel):
            for obj in ctx.objects.values():
                if isinstance(obj, Ioas):
                    out += [a for a in obj.areas if a.pages is pages and a.filled]
        return out

    # -- domains -----------------------------------------------------------------------------
    def add_domain(self, ioas: Ioas, hwpt: Hwpt) -> None:
        """iopt_table_add_domain: alignment, aperture reservation, fill."""
        pg = self.st.pgsize_bitmap & -self.st.pgsize_bitmap
        new_align = max(pg, ioas.iova_alignment)
        if new_align > PAGE:
            raise KernelError(errno.EINVAL, "iommufd: IOMMU page size above PAGE_SIZE")
        if new_align != ioas.iova_alignment:
            for a in ioas.areas:
                if (a.iova | a.length | (a.start_byte % PAGE)) & (new_align - 1):
                    raise KernelError(errno.EADDRINUSE, "iommufd: a mapping is not aligned to the IOMMU page")
        lo, hi = hwpt.aperture
        added: list[tuple[int, int, Any]] = []
        try:
            for s, e in ((0, lo - 1), (hi + 1, ULONG_MAX)):
                if s > e:
                    continue
                self.reserve(ioas, s, e, hwpt, added)
            if not ioas.hwpts:
                self.fill(list(ioas.areas))
        except KernelError:
            for r in added:
                ioas.reserved.remove(r)
            raise
        ioas.iova_alignment = new_align
        ioas.hwpts.append(hwpt)

    def remove_domain(self, hwpt: Hwpt) -> None:
        ioas = hwpt.ioas
        if hwpt in ioas.hwpts:
            ioas.hwpts.remove(hwpt)
        ioas.reserved = [r for r in ioas.reserved if r[2] is not hwpt]
        if not ioas.hwpts:
            self.unfill(list(ioas.areas))
        self._recalc_alignment(ioas)

    def _recalc_alignment(self, ioas: Ioas) -> None:
        """iopt_calculate_iova_alignment (callers checked the areas before raising it)."""
        align = PAGE if ioas.disable_large_pages else 1
        if ioas.hwpts:
            align = max(align, self.st.pgsize_bitmap & -self.st.pgsize_bitmap)
        ioas.iova_alignment = align

    @staticmethod
    def reserve(ioas: Ioas, s: int, e: int, owner: Any, added: list[tuple[int, int, Any]]) -> None:
        """iopt_reserve_iova: EADDRINUSE over a mapping or an allowed range."""
        if ioas.areas_in(s, e) or ioas.allowed_in(s, e):
            raise KernelError(errno.EADDRINUSE, f"iommufd: reserved range {s:#x}-{e:#x} is in use")
        r = (s, e, owner)
        ioas.reserved.append(r)
        added.append(r)

    def attach_device(self, idev: Idev, hwpt: Hwpt) -> None:
        """iommufd_hw_pagetable_attach: reserved regions of the device, then the group."""
        cur = self.group_hwpt.get(idev.group.number)
        if cur is not None and cur is not hwpt:
            raise KernelError(errno.EINVAL, "iommufd: the group is attached to another HWPT")
        added: list[tuple[int, int, Any]] = []
        try:
            for s, e in idev.group.reserved:
                self.reserve(hwpt.ioas, s, e, idev, added)
        except KernelError:
            for r in added:
                hwpt.ioas.reserved.remove(r)
            raise
        self.group_hwpt[idev.group.number] = hwpt
        hwpt.devices.append(idev)
        hwpt.users += 1
        idev.hwpt = hwpt

    def detach_device(self, idev: Idev) -> Hwpt:
        hwpt = idev.hwpt
        assert hwpt is not None
        hwpt.devices.remove(idev)
        hwpt.users -= 1
        if not any(d.group is idev.group for d in hwpt.devices):
            self.group_hwpt.pop(idev.group.number, None)
        hwpt.ioas.reserved = [r for r in hwpt.ioas.reserved if r[2] is not idev]
        idev.hwpt = None
        return hwpt

    def new_hwpt(self, ioas: Ioas, idev: Idev, *, auto: bool, dirty: bool,
                 attach: bool) -> Hwpt:
        """iommufd_hwpt_paging_alloc (immediate attach for automatic domains)."""
        hwpt = Hwpt(ioas, idev.group, auto=auto, dirty=dirty)
        if self.st.finalise_at_attach and not attach:
            hwpt.aperture = (0, 0)  # an unfinished virtio-iommu domain: geometry all zero
        if attach:
            self.attach_device(idev, hwpt)
        try:
            self.add_domain(ioas, hwpt)
        except KernelError:
            if attach:
                self.detach_device(idev)
            raise
        ioas.users += 1
        self.add(hwpt)
        return hwpt

    def put_hwpt(self, hwpt: Hwpt) -> None:
        """iommufd_hw_pagetable_put: an automatic HWPT goes with its last device."""
        if hwpt.auto_domain and not hwpt.devices and hwpt.id in self.objects:
            self._destroy_obj(hwpt)

    def _destroy_obj(self, obj: Obj) -> None:
        del self.objects[obj.id]
        if isinstance(obj, Ioas):
            obj.unmap_all()
        elif isinstance(obj, Hwpt):
            self.remove_domain(obj)
            obj.ioas.users -= 1

    def change_pt(self, idev: Idev, pt_id: int) -> int:
        """ATTACH/replace: ``pt_id`` an IOAS (automatic HWPT) or a HWPT. Returns the HWPT id."""
        obj = self.lookup(pt_id)
        old = idev.hwpt
        if isinstance(obj, Hwpt):
            target = obj
            if old is target:
                return target.id
            if old is not None:
                self.detach_device(idev)
            try:
                self.attach_device(idev, target)
            except KernelError:
                if old is not None:
                    self.attach_device(idev, old)
                raise
        elif isinstance(obj, Ioas):
            if old is not None and old.ioas is obj and old.auto_domain:
                return old.id
            if old is not None:
                self.detach_device(idev)
            try:
                found: Hwpt | None = None
                for h in obj.hwpts:
                    if h.auto_domain and h.id in self.objects:
                        try:
                            self.attach_device(idev, h)
                        except KernelError as e:
                            if e.errno == errno.EINVAL:
                                continue
                            raise
                        found = h
                        break
                target = found if found is not None else \
                    self.new_hwpt(obj, idev, auto=True, dirty=False, attach=True)
            except KernelError:
                if old is not None:
                    self.attach_device(idev, old)
                raise
        else:
            raise KernelError(errno.EINVAL, f"iommufd: object {pt_id} cannot be attached to")
        if old is not None and old is not target:
            self.put_hwpt(old)
        return target.id

    def detach(self, idev: Idev) -> None:
        if idev.hwpt is None:
            return
        self.put_hwpt(self.detach_device(idev))

    # -- ioctls ------------------------------------------------------------------------------
    @handles("IOMMU_DESTROY")
    def destroy(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_destroy", "id")
        obj = self.lookup(int(cmd.id))
        if obj.users > 1:
            raise KernelError(errno.EBUSY, f"iommufd: object {obj.id} ({obj.kind}) is in use")
        self._destroy_obj(obj)
        return 0

    @handles("IOMMU_IOAS_ALLOC")
    def ioas_alloc(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_ioas_alloc", "out_ioas_id")
        if cmd.flags:
            raise KernelError(errno.EOPNOTSUPP, "iommufd: IOAS_ALLOC flags")
        cmd.out_ioas_id = self.add(Ioas(self))
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_IOAS_IOVA_RANGES")
    def iova_ranges(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_ioas_iova_ranges", "out_iova_alignment")
        if getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: IOVA_RANGES reserved field")
        ioas = self.lookup(int(cmd.ioas_id), Ioas)
        holes = ioas.holes()
        room = int(cmd.num_iovas)
        if room and holes:
            out = ffi.cast("struct iommu_iova_range *", int(cmd.allowed_iovas))
            if not MockKernel.user_mapped(int(cmd.allowed_iovas),
                                          min(room, len(holes)) * ffi.sizeof("struct iommu_iova_range")):
                raise KernelError(errno.EFAULT, "iommufd: allowed_iovas not mapped")
            for i, (s, e) in enumerate(holes[:room]):
                out[i].start, out[i].last = s, e
        cmd.num_iovas = len(holes)
        cmd.out_iova_alignment = ioas.iova_alignment
        self._respond(arg, cmd, size)
        if len(holes) > room:
            raise KernelError(errno.EMSGSIZE, "")
        return 0

    @handles("IOMMU_IOAS_ALLOW_IOVAS")
    def allow_iovas(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_ioas_allow_iovas", "allowed_iovas")
        if getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: ALLOW_IOVAS reserved field")
        ioas = self.lookup(int(cmd.ioas_id), Ioas)
        n = int(cmd.num_iovas)
        new: list[tuple[int, int]] = []
        if n:
            if not MockKernel.user_mapped(int(cmd.allowed_iovas), n * ffi.sizeof("struct iommu_iova_range")):
                raise KernelError(errno.EFAULT, "iommufd: allowed_iovas not mapped")
            rng = ffi.cast("struct iommu_iova_range *", int(cmd.allowed_iovas))
            for i in range(n):
                s, e = int(rng[i].start), int(rng[i].last)
                if s >= e:
                    raise KernelError(errno.EINVAL, f"iommufd: allowed range {s:#x}-{e:#x} is empty")
                if any(a <= e and s <= b for a, b in new):
                    raise KernelError(errno.EINVAL, "iommufd: allowed ranges overlap")
                new.append((s, e))
        for s, e in new:
            if ioas.reserved_in(s, e):
                raise KernelError(errno.EADDRINUSE, f"iommufd: allowed range {s:#x}-{e:#x} is reserved")
        ioas.allowed = new
        return 0

    @staticmethod
    def _prot(flags: int) -> int:
        return ((IOMMU_WRITE if flags & I.IOMMU_IOAS_MAP_WRITEABLE else 0)
                | (IOMMU_READ if flags & I.IOMMU_IOAS_MAP_READABLE else 0))

    _MAP_FLAGS = I.IOMMU_IOAS_MAP_FIXED_IOVA | I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE

    @handles("IOMMU_IOAS_MAP")
    def ioas_map(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_ioas_map", "iova")
        flags = int(cmd.flags)
        if flags & ~self._MAP_FLAGS or getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: IOAS_MAP flags")
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_MAP iova/length")
        if not flags & (I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE):
            raise KernelError(errno.EINVAL, "iommufd: IOAS_MAP needs READABLE and/or WRITEABLE")
        ioas = self.lookup(int(cmd.ioas_id), Ioas)
        uptr, length = int(cmd.user_va), int(cmd.length)
        if length == 0 or length > ULONG_MAX - PAGE:
            raise KernelError(errno.EINVAL, "iommufd: IOAS_MAP length zero")
        if uptr + length > ULONG_MAX:
            raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_MAP user range wraps")
        account = ACCOUNT_NONE if self.st.cap_ipc_lock() else ACCOUNT_USER
        if self.account_mode == ACCOUNT_MM and account == ACCOUNT_USER:
            account = ACCOUNT_MM
        pages = Pages(uptr, length, bool(flags & I.IOMMU_IOAS_MAP_WRITEABLE), account)
        fixed = bool(flags & I.IOMMU_IOAS_MAP_FIXED_IOVA)
        cmd.iova = ioas.map_pages([(pages, uptr - pages.uptr, length)], length,
                                  int(cmd.iova) if fixed else None, self._prot(flags))
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_IOAS_COPY")
    def ioas_copy(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_ioas_copy", "src_iova")
        flags = int(cmd.flags)
        if flags & ~self._MAP_FLAGS:
            raise KernelError(errno.EOPNOTSUPP, "iommufd: IOAS_COPY flags")
        if cmd.length >= ULONG_MAX or cmd.src_iova >= ULONG_MAX or cmd.dst_iova >= ULONG_MAX:
            raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_COPY overflow")
        if not flags & (I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE):
            raise KernelError(errno.EINVAL, "iommufd: IOAS_COPY needs READABLE and/or WRITEABLE")
        src = self.lookup(int(cmd.src_ioas_id), Ioas)
        length, src_iova = int(cmd.length), int(cmd.src_iova)
        if not length:
            raise KernelError(errno.EINVAL, "iommufd: IOAS_COPY length zero")
        last = src_iova + length - 1
        if last > ULONG_MAX:
            raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_COPY source wraps")
        pieces: list[tuple[Pages, int, int]] = []
        cur = src_iova
        for a in src.areas_in(src_iova, last):
            if a.iova > cur:
                break
            end = min(last, a.last)
            pieces.append((a.pages, a.start_byte + (cur - a.iova), end - cur + 1))
            cur = end + 1
            if cur > last:
                break
        if cur <= last:
            raise KernelError(errno.ENOENT, f"iommufd: source {src_iova:#x}+{length:#x} not fully mapped")
        dst = self.lookup(int(cmd.dst_ioas_id), Ioas)
        fixed = bool(flags & I.IOMMU_IOAS_MAP_FIXED_IOVA)
        cmd.dst_iova = dst.map_pages(pieces, length, int(cmd.dst_iova) if fixed else None,
                                     self._prot(flags))
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_IOAS_UNMAP")
    def ioas_unmap(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_ioas_unmap", "length")
        ioas = self.lookup(int(cmd.ioas_id), Ioas)
        iova, length = int(cmd.iova), int(cmd.length)
        if iova == 0 and length == U64_MAX:
            done = ioas.unmap_all()
        else:
            if iova >= ULONG_MAX or length >= ULONG_MAX:
                raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_UNMAP overflow")
            if not length:
                raise KernelError(errno.EINVAL, "iommufd: IOAS_UNMAP length zero")
            if iova + length - 1 > ULONG_MAX:
                raise KernelError(errno.EOVERFLOW, "iommufd: IOAS_UNMAP wraps")
            err, done = ioas.unmap_range(iova, iova + length - 1)
            if err:
                raise KernelError(err, f"iommufd: IOAS_UNMAP {iova:#x}+{length:#x} cuts a mapping")
            if not done:
                raise KernelError(errno.ENOENT, f"iommufd: nothing mapped in {iova:#x}+{length:#x}")
        cmd.length = done
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_OPTION")
    def option(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_option", "val64")
        if getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: OPTION reserved field")
        op = int(cmd.op)
        if cmd.option_id == I.IOMMU_OPTION_RLIMIT_MODE:
            if cmd.object_id:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: RLIMIT_MODE is global (object_id 0)")
            if op == I.IOMMU_OPTION_OP_GET:
                cmd.val64 = 1 if self.account_mode == ACCOUNT_MM else 0
            elif op == I.IOMMU_OPTION_OP_SET:
                if not self.st.cap_sys_resource():
                    raise KernelError(errno.EPERM, "iommufd: RLIMIT_MODE needs CAP_SYS_RESOURCE")
                if self.objects:
                    raise KernelError(errno.EBUSY, "iommufd: RLIMIT_MODE only before any object exists")
                if cmd.val64 not in (0, 1):
                    raise KernelError(errno.EINVAL, "iommufd: RLIMIT_MODE is 0 or 1")
                self.account_mode = ACCOUNT_MM if cmd.val64 == 1 else ACCOUNT_USER
            else:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: OPTION op")
        elif cmd.option_id == I.IOMMU_OPTION_HUGE_PAGES:
            ioas = self.lookup(int(cmd.object_id), Ioas)
            if op == I.IOMMU_OPTION_OP_GET:
                cmd.val64 = 0 if ioas.disable_large_pages else 1
            elif op == I.IOMMU_OPTION_OP_SET:
                if cmd.val64 == 0:
                    if not ioas.disable_large_pages:
                        if ioas.hwpts and ioas.areas:
                            raise KernelError(errno.EINVAL, "iommufd: domains already hold mappings")
                        if PAGE > ioas.iova_alignment:
                            for a in ioas.areas:
                                if (a.iova | a.length | (a.start_byte % PAGE)) & (PAGE - 1):
                                    raise KernelError(errno.EADDRINUSE, "iommufd: unaligned mapping")
                        ioas.disable_large_pages = True
                        self._recalc_alignment(ioas)
                elif cmd.val64 == 1:
                    ioas.disable_large_pages = False
                    self._recalc_alignment(ioas)
                else:
                    raise KernelError(errno.EINVAL, "iommufd: HUGE_PAGES is 0 or 1")
            else:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: OPTION op")
        else:
            raise KernelError(errno.EOPNOTSUPP, f"iommufd: unknown option {cmd.option_id}")
        ffi.cast("struct iommu_option *", arg).val64 = cmd.val64
        return 0

    @handles("IOMMU_GET_HW_INFO")
    def get_hw_info(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_hw_info", "__reserved")
        if cmd.flags or any(getattr(cmd, "__reserved")[i] for i in range(3)):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: GET_HW_INFO flags/reserved")
        self.lookup(int(cmd.dev_id), Idev)
        data = b""
        if self.st.hw_info_type == I.IOMMU_HW_INFO_TYPE_INTEL_VTD:
            vtd = ffi.new("struct iommu_hw_info_vtd *")
            vtd.cap_reg, vtd.ecap_reg = VTD_CAP_REG, VTD_ECAP_REG
            data = bytes(ffi.buffer(vtd))
        want = int(cmd.data_len)
        if want:
            if not MockKernel.user_mapped(int(cmd.data_uptr), want):
                raise KernelError(errno.EFAULT, "iommufd: data_uptr not mapped")
            out = (data + bytes(want))[:want]
            MockKernel.write_user(int(cmd.data_uptr), out)
        cmd.out_data_type = self.st.hw_info_type
        cmd.data_len = len(data)
        cmd.out_capabilities = I.IOMMU_HW_CAP_DIRTY_TRACKING if self.st.dirty_tracking else 0
        cmd.out_max_pasid_log2 = 0
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_HWPT_ALLOC")
    def hwpt_alloc(self, arg: Any) -> int:
        cmd, size = self._ucmd(arg, "struct iommu_hwpt_alloc", "__reserved")
        if getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: HWPT_ALLOC reserved field")
        none = cmd.data_type == I.IOMMU_HWPT_DATA_NONE
        if (none and cmd.data_len) or (not none and not cmd.data_len):
            raise KernelError(errno.EINVAL, "iommufd: HWPT_ALLOC data_type/data_len mismatch")
        idev = self.lookup(int(cmd.dev_id), Idev)
        pt = self.objects.get(int(cmd.pt_id))
        if pt is None:
            raise KernelError(errno.EINVAL, f"iommufd: no object {cmd.pt_id}")
        flags = int(cmd.flags)
        if isinstance(pt, Ioas):
            valid = I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
            if (flags or not none) and not self.st.domain_alloc_user:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: the IOMMU driver has no domain_alloc_user")
            if flags & ~valid:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: HWPT_ALLOC flags")
            if flags & I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not self.st.dirty_tracking:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: the IOMMU has no dirty tracking")
            if not none:
                raise KernelError(errno.EOPNOTSUPP, "iommufd: driver data for a paging domain")
            hwpt = self.new_hwpt(pt, idev, auto=False,
                                 dirty=bool(flags & I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING), attach=False)
        elif isinstance(pt, Hwpt):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: nested domains are not supported by this IOMMU")
        else:
            raise KernelError(errno.EINVAL, f"iommufd: object {cmd.pt_id} is not an IOAS or HWPT")
        cmd.out_hwpt_id = hwpt.id
        self._respond(arg, cmd, size)
        return 0

    @handles("IOMMU_HWPT_SET_DIRTY_TRACKING")
    def set_dirty_tracking(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_hwpt_set_dirty_tracking", "__reserved")
        if cmd.flags & ~I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE:
            raise KernelError(errno.EOPNOTSUPP, "iommufd: SET_DIRTY_TRACKING flags")
        hwpt = self.lookup(int(cmd.hwpt_id), Hwpt)
        if not hwpt.dirty_ops:
            raise KernelError(errno.EOPNOTSUPP, "iommufd: HWPT allocated without DIRTY_TRACKING")
        enable = bool(cmd.flags & I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        if enable:
            hwpt.dirty.clear()
        hwpt.dirty_tracking = enable
        return 0

    @handles("IOMMU_HWPT_GET_DIRTY_BITMAP")
    def get_dirty_bitmap(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_hwpt_get_dirty_bitmap", "data")
        if cmd.flags & ~I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or getattr(cmd, "__reserved"):
            raise KernelError(errno.EOPNOTSUPP, "iommufd: GET_DIRTY_BITMAP flags")
        hwpt = self.lookup(int(cmd.hwpt_id), Hwpt)
        iova, length, pgsize = int(cmd.iova), int(cmd.length), int(cmd.page_size)
        last = iova + length - 1
        if last > U64_MAX or length == 0:
            raise KernelError(errno.EOVERFLOW, "iommufd: GET_DIRTY_BITMAP range wraps")
        align = hwpt.ioas.iova_alignment
        if iova & (align - 1) or (last + 1) & (align - 1):
            raise KernelError(errno.EINVAL, "iommufd: GET_DIRTY_BITMAP range not IOMMU-page aligned")
        if not pgsize:
            raise KernelError(errno.EINVAL, "iommufd: GET_DIRTY_BITMAP page_size 0")
        if pgsize & (pgsize - 1) or iova & (pgsize - 1) or (last + 1) & (pgsize - 1):
            raise KernelError(errno.EINVAL, "iommufd: GET_DIRTY_BITMAP range not page_size aligned")
        if not hwpt.dirty_ops:
            raise KernelError(errno.EOPNOTSUPP, "iommufd: HWPT allocated without DIRTY_TRACKING")
        nbits = length // pgsize
        nbytes = (nbits + 63) // 64 * 8
        if not MockKernel.user_mapped(int(cmd.data), nbytes):
            raise KernelError(errno.ENOMEM, "iommufd: bitmap memory not mapped")
        words = bytearray(MockKernel.read_user(int(cmd.data), nbytes))
        hits = sorted(p for p in hwpt.dirty if iova <= p * PAGE <= last)
        for p in hits:
            if not hwpt.ioas.areas_in(p * PAGE, p * PAGE):
                continue
            bit = (p * PAGE - iova) // pgsize
            words[bit // 8] |= 1 << (bit % 8)
        MockKernel.write_user(int(cmd.data), bytes(words))
        if not cmd.flags & I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR:
            hwpt.dirty -= set(hits)
        return 0

    @handles("IOMMU_VFIO_IOAS")
    def vfio_ioas(self, arg: Any) -> int:
        cmd, _size = self._ucmd(arg, "struct iommu_vfio_ioas", "__reserved")
        raise KernelError(errno.ENODEV if cmd.op == I.IOMMU_VFIO_IOAS_GET else errno.EOPNOTSUPP,
                          "iommufd: the VFIO compat container is not configured (IOMMUFD_VFIO_CONTAINER=n)")

    # -- lifetime ----------------------------------------------------------------------------
    def release(self) -> None:
        """iommufd_fops_release: destroy leaves first until the table is empty."""
        while self.objects:
            progress = False
            for obj in sorted(self.objects.values(), key=lambda o: -o.id):
                if obj.users == 1:
                    self._destroy_obj(obj)
                    progress = True
            if not progress:
                break
        _contexts(self.kernel).discard(self)


def _contexts(kernel: MockKernel) -> set[IommufdFile]:
    return kernel.state.setdefault("iommufd.contexts", set())


def _live_contexts(kernel: MockKernel) -> list[IommufdFile]:
    return list(_contexts(kernel))


# ---------------------------------------------------------------------------------------------
# /dev/vfio/devices/vfioN
# ---------------------------------------------------------------------------------------------


class CdevDma:
    """What a simulated device behind a cdev DMAs through: the IOAS of its attached HWPT.

    Provides the same ``dma_read``/``dma_write`` contract as :class:`~pyvfio.mockkernel.vfio.MockGroup`
    (and ``iommu_group`` for hot-reset reports)."""

    def __init__(self, cdev: "VfioCdevFile") -> None:
        self.cdev = cdev
        self.iommu_group = cdev.entry.group

    def translate(self, iova: int, size: int, write: bool, device: str | None = None) -> int:
        idev = self.cdev.idev
        hwpt = idev.hwpt if idev is not None else None
        try:
            if hwpt is None:
                raise IommuFault(errno.EFAULT, "blocked domain")
            need = IOMMU_WRITE if write else IOMMU_READ
            pos, base = iova, None
            while pos < iova + size:
                hit = hwpt.ioas.areas_in(pos, pos)
                a = hit[0] if hit else None
                if a is None or not a.filled or not a.prot & need:
                    raise IommuFault(errno.EFAULT, f"IOMMU fault at {pos:#x}")
                va = a.vaddr(pos)
                if base is None:
                    base = va
                elif va != base + (pos - iova):
                    raise IommuFault(errno.EFAULT, "IOVA range not contiguous in memory")
                pos = a.last + 1
            assert base is not None
        except IommuFault:
            self._fault(iova, write, device)
            raise
        if write and hwpt.dirty_tracking:
            hwpt.dirty.update(range(iova // PAGE, (iova + size - 1) // PAGE + 1))
        return base

    def _fault(self, iova: int, write: bool, device: str | None) -> None:
        name = device or self.cdev.entry.name
        label = name.split(":", 1)[1] if name.count(":") == 2 else name
        kind, reason, text = (("Write", "0x05", "PTE Write access is not set") if write
                              else ("Read", "0x06", "PTE Read access is not set"))
        self.cdev.kernel.log(f"DMAR: [DMA {kind} NO_PASID] Request device [{label}] "
                             f"fault addr {iova:#x} [fault reason {reason}] {text}")

    def dma_read(self, iova: int, size: int, device: str | None = None) -> bytes:
        return MockKernel.read_user(self.translate(iova, size, False, device), size)

    def dma_write(self, iova: int, data: bytes, device: str | None = None) -> None:
        MockKernel.write_user(self.translate(iova, len(data), True, device), bytes(data))


class VfioCdevFile(MockFile):
    """An open /dev/vfio/devices/vfioN (vfio_device_fops through the cdev)."""

    def __init__(self, kernel: MockKernel, path: str, entry: Any) -> None:
        super().__init__(kernel, path)
        self.entry = entry
        self.ctx: IommufdFile | None = None
        self.idev: Idev | None = None
        self.inner: MockFile | None = None

    def ioctl(self, request: int, arg: Any) -> int:
        if request in self._requests:
            return super().ioctl(request, arg)
        if self.inner is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        return self.inner.ioctl(request, arg)

    def _bound(self) -> MockFile:
        if self.inner is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        return self.inner

    def pread(self, size: int, offset: int) -> bytes:
        return self._bound().pread(size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return self._bound().pwrite(data, offset)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> int:
        return self._bound().mmap(length, prot, flags, offset)

    @staticmethod
    def _argsz(arg: Any, ctype: str, last: str) -> Any:
        if isinstance(arg, int):
            raise KernelError(errno.EFAULT, "vfio: the argument must point to a struct")
        s = ffi.cast(ctype + " *", arg)
        fields = dict(ffi.typeof(ctype).fields)
        minsz = fields[last].offset + ffi.sizeof(fields[last].type)
        if s.argsz < minsz or s.flags:
            raise KernelError(errno.EINVAL, f"vfio: {ctype} argsz/flags invalid")
        return s

    @handles("VFIO_DEVICE_BIND_IOMMUFD")
    def bind_iommufd(self, arg: Any) -> int:
        b = self._argsz(arg, "struct vfio_device_bind_iommufd", "out_devid")
        if b.iommufd < 0:
            raise KernelError(errno.EINVAL, "vfio: BIND_IOMMUFD negative fd")
        st = state(self.kernel)
        g = self.entry.group
        if g.vfio is not None:
            raise KernelError(errno.EBUSY, f"vfio: group {g.number} is open through /dev/vfio/{g.number}")
        if self.ctx is not None:
            raise KernelError(errno.EINVAL, "vfio: device already bound")
        target = self.kernel.files.get(int(b.iommufd))
        if target is None:
            try:
                os.fstat(int(b.iommufd))
            except OSError:
                raise KernelError(errno.EBADF, f"vfio: fd {b.iommufd} is not open") from None
            raise KernelError(errno.EBADFD, f"vfio: fd {b.iommufd} is not an iommufd")
        if not isinstance(target, IommufdFile):
            raise KernelError(errno.EBADFD, f"vfio: fd {b.iommufd} is not an iommufd")
        if self.entry.name in st.bound:  # vfio_df_open: the cdev path opens a device once
            raise KernelError(errno.EINVAL, f"vfio: {self.entry.name} is already open through another cdev fd")
        # iommufd_device_bind
        if not g.interrupt_remapping:
            unsafe = vfio_state(self.kernel).read_param("iommufd", "allow_unsafe_interrupts", "N")
            if unsafe not in ("Y", "1"):
                raise KernelError(errno.EPERM, "iommufd: MSI interrupts cannot be isolated by the "
                                  'platform; use the "allow_unsafe_interrupts" module parameter')
            self.kernel.log(f"vfio-pci {self.entry.name}: MSI interrupts are not secure, they "
                            "cannot be isolated by the platform.")
        owner = st.dma_owner.get(g.number)
        if owner is not None and owner is not target:
            raise KernelError(errno.EBUSY, f"iommufd: group {g.number} DMA is owned by another iommufd")
        from . import pci

        inner = pci.open_device_file(self.kernel, CdevDma(self), self.entry.sim)
        idev = Idev(target, self.entry, self)
        target.add(idev)
        st.dma_owner[g.number] = target
        st.bound.add(self.entry.name)
        st.cdev_open[g.number] = st.cdev_open.get(g.number, 0) + 1
        self.ctx = target.get_ref()
        self.idev = idev
        self.inner = inner
        b.out_devid = idev.id
        return 0

    @handles("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
    def attach_pt(self, arg: Any) -> int:
        if self.ctx is None or self.idev is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        a = self._argsz(arg, "struct vfio_device_attach_iommufd_pt", "pt_id")
        a.pt_id = self.ctx.change_pt(self.idev, int(a.pt_id))
        return 0

    @handles("VFIO_DEVICE_DETACH_IOMMUFD_PT")
    def detach_pt(self, arg: Any) -> int:
        if self.ctx is None or self.idev is None:
            raise KernelError(errno.EINVAL, f"{self.path}: not bound to an iommufd yet")
        self._argsz(arg, "struct vfio_device_detach_iommufd_pt", "flags")
        self.ctx.detach(self.idev)
        return 0

    def release(self) -> None:
        if self.ctx is None or self.idev is None:
            return
        ctx, idev = self.ctx, self.idev
        try:
            if self.inner is not None:
                self.inner.put()
        finally:
            ctx.detach(idev)
            ctx.objects.pop(idev.id, None)
            st = state(self.kernel)
            st.bound.discard(self.entry.name)
            n = idev.group.number
            st.cdev_open[n] -= 1
            if not st.cdev_open[n]:
                del st.cdev_open[n]
                if st.dma_owner.get(n) is ctx:
                    del st.dma_owner[n]
            self.ctx = self.idev = self.inner = None
            ctx.put()


# ---------------------------------------------------------------------------------------------
# routes and sysfs
# ---------------------------------------------------------------------------------------------


def sync_cdevs(kernel: MockKernel) -> dict[str, int]:
    """Give every vfio-pci bound device a cdev number and its sysfs ``vfio-dev/vfioN`` entry
    (what vfio_device_add does); call again after adding devices to the mock topology."""
    st = state(kernel)
    for name, entry in vfio_state(kernel).devices.items():
        if entry.driver != "vfio-pci" or name in st.cdev_index:
            continue
        n = len(st.cdev_index)
        st.cdev_index[name] = n
        d = os.path.join(kernel.sysfs_root, "bus", "pci", "devices", name, "vfio-dev", f"vfio{n}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "dev"), "w") as f:
            f.write(f"511:{n}\n")
    return dict(st.cdev_index)


def _open_iommu(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    f = IommufdFile(kernel, "/dev/iommu")
    _contexts(kernel).add(f)
    return f


def _open_cdev(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    n = int(m.group(1))
    st = state(kernel)
    name = next((b for b, i in st.cdev_index.items() if i == n), None)
    entry = vfio_state(kernel).devices.get(name) if name else None
    if entry is None or entry.driver != "vfio-pci" or entry.sim is None:
        raise KernelError(errno.ENOENT, f"/dev/vfio/devices/vfio{n}: no such device")
    return VfioCdevFile(kernel, f"/dev/vfio/devices/vfio{n}", entry)


def group_blocked(kernel: MockKernel, group: int) -> bool:
    """True while a device of ``group`` is bound through its cdev (the group cannot open)."""
    st = kernel.state.get(NAME)
    return bool(st and st.cdev_open.get(group))


def install(kernel: MockKernel) -> None:
    """Register /dev/iommu, /dev/vfio/devices/vfioN and iommufd's module parameter."""
    st = IommufdState(kernel)
    kernel.state[NAME] = st
    kernel.route(r"/dev/iommu", _open_iommu)
    kernel.route(r"/dev/vfio/devices/vfio(\d+)", _open_cdev)
    vfio_state(kernel).write_param("iommufd", "allow_unsafe_interrupts", "N")
    sync_cdevs(kernel)


__all__ = ["IommufdState", "IommufdFile", "VfioCdevFile", "CdevDma", "state", "sync_cdevs",
           "group_blocked", "install"]
