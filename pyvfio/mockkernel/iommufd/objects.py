"""iommufd objects: the per-kernel state, IOAS (areas, pinned pages, allowed and reserved ranges),
HWPT and bound devices.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ... import ioctls as I
from ..core import KernelError, MockKernel
from ..vfio import MockIommuGroup, state as vfio_state
from ..task import MockTask
from ...util.intervals import SortedIndex

if TYPE_CHECKING:
    from .cdev import VfioCdevFile
    from .file import IommufdFile


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
    return MockTask.has_cap(bit)


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


def _area_end(a: Area) -> int:
    return a.last + 1


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
        #: The areas by IOVA (disjoint).
        self.areas: SortedIndex[Area] = SortedIndex()
        #: (start, last, owner)
        self.reserved: list[tuple[int, int, Any]] = []
        self.allowed: list[tuple[int, int]] = []
        self.iova_alignment = 1
        self.disable_large_pages = False
        self.hwpts: list[Hwpt] = []

    # -- lookups --------------------------------------------------------------------------
    def areas_in(self, start: int, last: int) -> list[Area]:
        return self.areas.overlapping(start, last + 1, _area_end)

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
        self.areas.insert(a.iova, a)

    def _unlink(self, a: Area) -> None:
        self.areas.remove(a.iova, a)

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


