"""Mock vfio_iommu_spapr_tce: the sPAPR TCE v1/v2 IOMMU of drivers/vfio/vfio_iommu_spapr_tce.c
and the memory pre-registration of arch/powerpc/mm/book3s64/iommu_api.c, as Linux 6.12 answers
in the POWER9 pseries test guest (vm/power/; every errno below was measured there).

Windows (DMA windows, ``tables[]`` in the kernel): at most ``max_windows`` (2). The default
32-bit window is ``[0, 1 GiB)`` with 4 KiB IOMMU pages. v1 gets it at attach time; v2 has it
*pending* and creates it on the first MAP/UNMAP/TCE_CREATE (TCE_REMOVE of address 0 while it is
pending just cancels it). TCE_CREATE puts window #0 at 0 and window #1 at ``DDW_START``
(0x800000000000000).

===========================  ===================================================================
request                      errno (condition), checked in this order
===========================  ===================================================================
CHECK_EXTENSION              1 for SPAPR_TCE (2) and SPAPR_TCE_v2 (7); VFIO_EEH 0 (no EEH here)
SPAPR_TCE_GET_INFO           ENXIO no group; EINVAL argsz < 16.  flags = DDW (v2 only) and the
                             ddw block is written when argsz >= 32
MAP_DMA                      EPERM not enabled (v1: before ENABLE; v2: before the first
                             REGISTER_MEMORY, ever); EINVAL argsz < 32 or flags beyond R|W;
                             ENXIO iova in no window; EINVAL vaddr/size not aligned to the
                             window's page; EINVAL neither R nor W; EINVAL iova not aligned (the
                             real kernel WARNs and returns 1), EINVAL range runs past the window
                             end (the real kernel oopses: pyvfio never sends it); v2: EINVAL a
                             page outside every registered region or the region's page size
                             smaller than the window's; v1: EFAULT vaddr not mapped, EPERM page
                             smaller than the IOMMU page.  Size 0 is a no-op; mapping over a
                             mapped entry replaces it (no EEXIST)
UNMAP_DMA                    EPERM not enabled; EINVAL argsz < 24 or any flag; ENXIO iova in no
                             window; EINVAL size not aligned.  Clears what is there (nothing is
                             fine), clipped at the window end; ``size`` is not written back
SPAPR_REGISTER_MEMORY        ENOTTY on v1; EINVAL argsz/flags, vaddr/size not 4 KiB aligned or
                             wrapping; EBUSY exactly this region is already registered in the
                             container; ENOMEM size 0; EINVAL overlaps another region; EFAULT
                             memory not mapped; ENOMEM over RLIMIT_MEMLOCK without CAP_IPC_LOCK.
                             Enables the container (MAP allowed from now on, even after every
                             region is unregistered)
SPAPR_UNREGISTER_MEMORY      ENOTTY on v1; EPERM nothing was ever registered in the container
                             (no mm yet); EINVAL argsz/flags/alignment; ENOENT no region with
                             exactly this vaddr and size (partial, mismatched, twice) or not this
                             container's.  While pages of the region are still mapped the 6.12
                             kernel answers **0**: the container forgets the region but the
                             region stays pinned and mapped (iommu_api's final mm_iommu_put's
                             EBUSY is ignored); registering it again reuses it.  pyvfio's
                             SpaprTceV2Iommu refuses that before the syscall (EBUSY)
ENABLE / DISABLE             ENOTTY on v2.  ENABLE: EBUSY already enabled, ENODEV no group,
                             ENOMEM window size over RLIMIT_MEMLOCK; DISABLE is idempotent
SPAPR_TCE_CREATE             ENOTTY on v1; ENXIO no group; EINVAL argsz < 40 or flags; ENOSPC no
                             free window; EINVAL page size not in ddw.pgsizes, window size 0,
                             not a power of two, smaller than a page or above ``max_window``,
                             levels above ddw.levels (0 is taken as 1); EPERM window #0 while #1
                             exists
SPAPR_TCE_REMOVE             ENOTTY on v1; ENXIO no group; EINVAL argsz < 16 or flags; 0 for
                             address 0 while the default window is pending; EINVAL no window
                             contains the address (any address inside a window removes it)
EEH_PE_OP                    ENODEV (the guest has no EEH for the group)
anything else                ENOTTY
===========================  ===================================================================

Locked memory: v1 accounts the whole 32-bit window at ENABLE; v2 accounts each region at
REGISTER; both into the task's locked_vm (MockTask.pinned), refused with ENOMEM past
RLIMIT_MEMLOCK unless the caller has CAP_IPC_LOCK.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from ... import ioctls
from ...uapi import ffi
from ..core import KernelError, MockKernel, handles
from . import install as vfio_install
from ..pci import make_edu
from .topology import add_device
from .core import IommuDriver, IommuFault, register_iommu_driver, state
from .group import MockGroup
from ..memory import user_mapped

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
DMA32_START = 0
DMA32_SIZE = 1 << 30
DDW_START = 0x800000000000000
#: 4K | 64K | 2M | 16M: what the pseries guest's ddw.pgsizes reports.
DDW_PGSIZES = 0x1211000
U64 = (1 << 64) - 1

TCE_READ = 1   # DMA_TO_DEVICE: the device may read memory
TCE_WRITE = 2  # DMA_FROM_DEVICE: the device may write memory


@dataclass
class MemRegion:
    """A pre-registered region (the kernel's mm_iommu_table_group_mem_t): per process."""

    ua: int
    entries: int
    used: int = 1
    mapped: int = 1  # 1 = registered, no TCE uses it; each TCE adds one
    pageshift: int = PAGE_SHIFT

    @property
    def size(self) -> int:
        return self.entries << PAGE_SHIFT

    def contains(self, ua: int, size: int) -> bool:
        return self.ua <= ua and ua + size <= self.ua + self.size


@dataclass
class Window:
    """A DMA window (iommu_table): TCEs by entry number."""

    start: int
    size: int
    page_shift: int
    levels: int
    tces: dict[int, tuple[int, int, MemRegion | None]] = field(default_factory=dict)

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    def holds(self, iova: int) -> bool:
        return self.start <= iova < self.start + self.size


class MmState:
    """The process's registered regions (mm->context.iommu_group_mem_list), per mock kernel."""

    def __init__(self) -> None:
        self.regions: list[MemRegion] = []

    def get(self, ua: int, entries: int) -> MemRegion | None:
        for r in self.regions:
            if r.ua == ua and r.entries == entries:
                r.used += 1
                return r
        return None

    def lookup(self, ua: int, size: int) -> MemRegion | None:
        for r in self.regions:
            if r.contains(ua, size):
                return r
        return None

    def put(self, kernel: MockKernel, r: MemRegion) -> int:
        """mm_iommu_put: 0, or the errno it returns (the caller may ignore it, as 6.12 does)."""
        if r.used == 0:
            return errno.ENOENT
        r.used -= 1
        if r.used:
            return 0
        if r.mapped != 1:
            r.used += 1
            return errno.EBUSY
        r.mapped = 0
        self.regions.remove(r)
        state(kernel).task.pinned -= r.size
        return 0


def _mm(kernel: MockKernel) -> MmState:
    st = state(kernel)
    mm = getattr(st, "spapr_mm", None)
    if mm is None:
        mm = MmState()
        st.spapr_mm = mm  # type: ignore[attr-defined]
    return mm


def _charge(kernel: MockKernel, size: int, what: str) -> None:
    """account_locked_vm(+): ENOMEM past RLIMIT_MEMLOCK without CAP_IPC_LOCK."""
    task = state(kernel).task
    if not task.cap_ipc_lock() and task.locked_vm() + size > task.rlimit_memlock():
        raise KernelError(errno.ENOMEM, f"{what}: RLIMIT_MEMLOCK ({task.rlimit_memlock()}) exceeded")
    task.pinned += size


class SpaprTceIommu(IommuDriver):
    """The iommu_data of a container whose IOMMU is sPAPR TCE (v1: type 2, v2: type 7)."""

    TYPES = (ioctls.VFIO_SPAPR_TCE_IOMMU, ioctls.VFIO_SPAPR_TCE_v2_IOMMU)
    #: Mock knobs (class level), defaults as in the pseries guest.
    max_windows = 2
    max_levels = 1
    pgsizes = DDW_PGSIZES
    max_window = 1 << 40
    eeh_supported = False

    def __init__(self, kernel: MockKernel, container: Any, arg: int) -> None:
        if arg not in self.TYPES:
            raise KernelError(errno.EINVAL, "tce_vfio: Wrong IOMMU type")
        super().__init__(kernel, container, arg)
        self.v2 = arg == ioctls.VFIO_SPAPR_TCE_v2_IOMMU
        self.enabled = False
        self.mm_set = False
        self.def_window_pending = False
        self.tables: list[Window | None] = [None] * self.max_windows
        self.prereg: list[MemRegion] = []
        self.locked = 0  # v1 ENABLE's accounting

    # -- driver ops ----------------------------------------------------------------------------
    @classmethod
    def check_extension(cls, iommu: "IommuDriver | None", arg: int) -> int:
        if arg in (ioctls.VFIO_SPAPR_TCE_IOMMU, ioctls.VFIO_SPAPR_TCE_v2_IOMMU):
            return 1
        if arg == ioctls.VFIO_EEH:
            return 1 if cls.eeh_supported else 0
        return 0

    def attach_group(self, group: MockGroup) -> None:
        first = not self.groups
        super().attach_group(group)
        if first:
            if self.v2:
                if self.tables[0] is None:
                    self.def_window_pending = True
            else:
                self.tables[0] = Window(DMA32_START, DMA32_SIZE, PAGE_SHIFT, 1)

    def detach_group(self, group: MockGroup) -> None:
        super().detach_group(group)
        if not self.groups:
            for i, w in enumerate(self.tables):
                if w is not None:
                    self._clear(w, w.start, w.size)
                    if not self.v2:
                        self.tables[i] = None
            self.def_window_pending = False

    def release(self) -> None:
        for i, w in enumerate(self.tables):
            if w is not None:
                self._clear(w, w.start, w.size)
                self.tables[i] = None
        mm = _mm(self.kernel)
        for r in list(self.prereg):
            self.prereg.remove(r)
            mm.put(self.kernel, r)
        self._disable()

    # -- helpers ---------------------------------------------------------------------------------
    def _find_table(self, iova: int) -> Window | None:
        for w in self.tables:
            if w is not None and w.holds(iova):
                return w
        return None

    def _create_default(self) -> None:
        if not self.def_window_pending:
            return
        if not self.groups:
            raise KernelError(errno.ENODEV, "tce_vfio: no group for the default window")
        self._create(PAGE_SHIFT, DMA32_SIZE, 1)
        self.def_window_pending = False

    def _create(self, page_shift: int, window_size: int, levels: int) -> Window:
        try:
            num = self.tables.index(None)
        except ValueError:
            raise KernelError(errno.ENOSPC, "tce_vfio: no free DMA window") from None
        if page_shift >= 64 or not self.pgsizes & (1 << page_shift):
            raise KernelError(errno.EINVAL, f"tce_vfio: page shift {page_shift} not supported")
        if (window_size <= 0 or window_size & (window_size - 1) or window_size < (1 << page_shift)
                or window_size > self.max_window or levels > self.max_levels):
            raise KernelError(errno.EINVAL, "spapr_tce_create_table: bad window size or levels")
        if num == 0 and any(t is not None for t in self.tables[1:]):
            raise KernelError(errno.EPERM, "Attempt to create window#0 when 64-bit window is "
                              "present. Preventing the attempt as that would break ABI")
        start = DMA32_START if num == 0 else DDW_START
        w = Window(start, window_size, page_shift, max(levels, 1))
        self.tables[num] = w
        return w

    def _clear(self, w: Window, start: int, size: int) -> None:
        first = (start - w.start) >> w.page_shift
        last = min(first + (size >> w.page_shift), w.size >> w.page_shift)
        for entry in [e for e in w.tces if first <= e < last]:
            _vaddr, _dir, region = w.tces.pop(entry)
            if region is not None and region.mapped > 1:
                region.mapped -= 1

    def _disable(self) -> None:
        if self.enabled and not self.v2:
            state(self.kernel).task.pinned -= self.locked
            self.locked = 0
        self.enabled = False

    @staticmethod
    def _argsz(arg: Any, ctype: str, last_field: str) -> Any:
        p = ffi.cast(ctype + " *", arg)
        minsz = ffi.offsetof(ctype, last_field) + _field_size(ctype, last_field)  # offsetofend
        if p.argsz < minsz:
            raise KernelError(errno.EINVAL, f"tce_vfio: argsz {p.argsz} below {minsz}")
        return p

    # -- ioctls ----------------------------------------------------------------------------------
    @handles("VFIO_IOMMU_SPAPR_TCE_GET_INFO")
    def get_info(self, arg: Any) -> int:
        if not self.groups:
            raise KernelError(errno.ENXIO, "tce_vfio: GET_INFO without a group")
        ctype = "struct vfio_iommu_spapr_tce_info"
        info = self._argsz(arg, ctype, "dma32_window_size")
        argsz = int(info.argsz)
        info.flags = ioctls.VFIO_IOMMU_SPAPR_INFO_DDW if self.v2 else 0
        info.dma32_window_start = DMA32_START
        info.dma32_window_size = DMA32_SIZE
        if argsz >= ffi.sizeof(ctype):
            info.ddw.pgsizes = self.pgsizes if self.v2 else 0
            info.ddw.max_dynamic_windows_supported = self.max_windows if self.v2 else 0
            info.ddw.levels = self.max_levels if self.v2 else 0
        return 0

    @handles("VFIO_IOMMU_MAP_DMA")
    def map_dma(self, arg: Any) -> int:
        if not self.enabled:
            raise KernelError(errno.EPERM, "tce_vfio: MAP_DMA before the container is enabled")
        m = self._argsz(arg, "struct vfio_iommu_type1_dma_map", "size")
        flags = int(m.flags)
        if flags & ~(ioctls.VFIO_DMA_MAP_FLAG_READ | ioctls.VFIO_DMA_MAP_FLAG_WRITE):
            raise KernelError(errno.EINVAL, "tce_vfio: MAP_DMA unknown flags")
        self._create_default()
        iova, vaddr, size = int(m.iova), int(m.vaddr), int(m.size)
        w = self._find_table(iova)
        if w is None:
            raise KernelError(errno.ENXIO, f"tce_vfio: no DMA window at {iova:#x}")
        mask = w.page_size - 1
        if size & mask or vaddr & mask:
            raise KernelError(errno.EINVAL, "tce_vfio: MAP_DMA size/vaddr not IOMMU page aligned")
        direction = ((TCE_READ if flags & ioctls.VFIO_DMA_MAP_FLAG_READ else 0)
                     | (TCE_WRITE if flags & ioctls.VFIO_DMA_MAP_FLAG_WRITE else 0))
        if not direction:
            raise KernelError(errno.EINVAL, "tce_vfio: MAP_DMA needs READ and/or WRITE")
        if iova & mask:
            raise KernelError(errno.EINVAL, "iommu_tce_put_param_check: iova not aligned")
        if iova + size > w.start + w.size:
            raise KernelError(errno.EINVAL, "tce_vfio: MAP_DMA runs past the window end "
                              "(the 6.12 kernel oopses here)")
        first = (iova - w.start) >> w.page_shift
        npages = size >> w.page_shift
        # validate every page first, then install (the kernel undoes partial work the same way)
        plan: list[tuple[int, int, MemRegion | None]] = []
        mm = _mm(self.kernel)
        for i in range(npages):
            ua = vaddr + (i << w.page_shift)
            if self.v2:
                r = mm.lookup(ua, w.page_size)
                if r is None or w.page_shift > r.pageshift:
                    raise KernelError(errno.EINVAL, f"tce_vfio: {ua:#x} is not in registered memory")
                plan.append((ua, direction, r))
            else:
                if not user_mapped(ua, w.page_size):
                    raise KernelError(errno.EFAULT, f"tce_vfio: {ua:#x} not mapped")
                if w.page_shift > PAGE_SHIFT:
                    raise KernelError(errno.EPERM, "tce_vfio: page smaller than the IOMMU page")
                plan.append((ua, direction, None))
        for i, tce in enumerate(plan):
            old = w.tces.get(first + i)
            if old is not None and old[2] is not None and old[2].mapped > 1:
                old[2].mapped -= 1
            if tce[2] is not None:
                tce[2].mapped += 1
            w.tces[first + i] = tce
        return 0

    @handles("VFIO_IOMMU_UNMAP_DMA")
    def unmap_dma(self, arg: Any) -> int:
        if not self.enabled:
            raise KernelError(errno.EPERM, "tce_vfio: UNMAP_DMA before the container is enabled")
        u = self._argsz(arg, "struct vfio_iommu_type1_dma_unmap", "size")
        if u.flags:
            raise KernelError(errno.EINVAL, "tce_vfio: UNMAP_DMA takes no flags")
        self._create_default()
        iova, size = int(u.iova), int(u.size)
        w = self._find_table(iova)
        if w is None:
            raise KernelError(errno.ENXIO, f"tce_vfio: no DMA window at {iova:#x}")
        if size & (w.page_size - 1):
            raise KernelError(errno.EINVAL, "tce_vfio: UNMAP_DMA size not IOMMU page aligned")
        self._clear(w, iova & ~(w.page_size - 1), size)
        return 0

    @handles("VFIO_IOMMU_SPAPR_REGISTER_MEMORY")
    def register_memory(self, arg: Any) -> int:
        if not self.v2:
            raise KernelError(errno.ENOTTY, "")
        self.mm_set = True
        r = self._argsz(arg, "struct vfio_iommu_spapr_register_memory", "size")
        if r.flags:
            raise KernelError(errno.EINVAL, "tce_vfio: REGISTER_MEMORY takes no flags")
        ua, size = int(r.vaddr), int(r.size)
        if ua & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1) or ua + size > U64:
            raise KernelError(errno.EINVAL, "tce_vfio: REGISTER_MEMORY unaligned or wrapping")
        entries = size >> PAGE_SHIFT
        mm = _mm(self.kernel)
        region = mm.get(ua, entries)
        if region is not None:
            if any(p is region for p in self.prereg):
                mm.put(self.kernel, region)
                raise KernelError(errno.EBUSY, "tce_vfio: region already registered")
        else:
            if entries == 0:
                raise KernelError(errno.ENOMEM, "mm_iommu_new: no entries (vzalloc(0))")
            _charge(self.kernel, size, "mm_iommu_new")
            if not user_mapped(ua, size):
                state(self.kernel).task.pinned -= size
                raise KernelError(errno.EFAULT, f"mm_iommu_new: {ua:#x}+{size:#x} not mapped")
            if any(o.ua < ua + size and ua < o.ua + o.size for o in mm.regions):
                state(self.kernel).task.pinned -= size
                raise KernelError(errno.EINVAL, "mm_iommu_new: overlaps a registered region")
            region = MemRegion(ua, entries)
            mm.regions.append(region)
        self.prereg.append(region)
        self.enabled = True
        return 0

    @handles("VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY")
    def unregister_memory(self, arg: Any) -> int:
        if not self.v2:
            raise KernelError(errno.ENOTTY, "")
        if not self.mm_set:
            raise KernelError(errno.EPERM, "tce_vfio: UNREGISTER_MEMORY before any registration")
        r = self._argsz(arg, "struct vfio_iommu_spapr_register_memory", "size")
        if r.flags:
            raise KernelError(errno.EINVAL, "tce_vfio: UNREGISTER_MEMORY takes no flags")
        ua, size = int(r.vaddr), int(r.size)
        if ua & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1):
            raise KernelError(errno.EINVAL, "tce_vfio: UNREGISTER_MEMORY unaligned")
        mm = _mm(self.kernel)
        region = mm.get(ua, size >> PAGE_SHIFT)
        if region is None:
            raise KernelError(errno.ENOENT, "tce_vfio: no such registered region")
        ret = 0
        if not any(p is region for p in self.prereg):
            ret = errno.ENOENT
        else:
            ret = mm.put(self.kernel, region)  # tce_iommu_prereg_free
            if ret == 0:
                self.prereg.remove(region)
        mm.put(self.kernel, region)  # its result is ignored by the 6.12 kernel
        if ret:
            raise KernelError(ret, "tce_vfio: UNREGISTER_MEMORY failed")
        return 0

    @handles("VFIO_IOMMU_ENABLE")
    def enable(self, arg: Any) -> int:
        if self.v2:
            raise KernelError(errno.ENOTTY, "")
        if self.enabled:
            raise KernelError(errno.EBUSY, "tce_vfio: already enabled")
        if not self.groups:
            raise KernelError(errno.ENODEV, "tce_vfio: ENABLE without a group")
        self.mm_set = True
        _charge(self.kernel, DMA32_SIZE, "tce_iommu_enable")
        self.locked = DMA32_SIZE
        self.enabled = True
        return 0

    @handles("VFIO_IOMMU_DISABLE")
    def disable(self, arg: Any) -> int:
        if self.v2:
            raise KernelError(errno.ENOTTY, "")
        self._disable()
        return 0

    @handles("VFIO_IOMMU_SPAPR_TCE_CREATE")
    def tce_create(self, arg: Any) -> int:
        if not self.v2:
            raise KernelError(errno.ENOTTY, "")
        self.mm_set = True
        if not self.groups:
            raise KernelError(errno.ENXIO, "tce_vfio: TCE_CREATE without a group")
        c = self._argsz(arg, "struct vfio_iommu_spapr_tce_create", "start_addr")
        if c.flags:
            raise KernelError(errno.EINVAL, "tce_vfio: TCE_CREATE takes no flags")
        self._create_default()
        w = self._create(int(c.page_shift), int(c.window_size), int(c.levels))
        c.start_addr = w.start
        return 0

    @handles("VFIO_IOMMU_SPAPR_TCE_REMOVE")
    def tce_remove(self, arg: Any) -> int:
        if not self.v2:
            raise KernelError(errno.ENOTTY, "")
        self.mm_set = True
        if not self.groups:
            raise KernelError(errno.ENXIO, "tce_vfio: TCE_REMOVE without a group")
        r = self._argsz(arg, "struct vfio_iommu_spapr_tce_remove", "start_addr")
        if r.flags:
            raise KernelError(errno.EINVAL, "tce_vfio: TCE_REMOVE takes no flags")
        start = int(r.start_addr)
        if self.def_window_pending and not start:
            self.def_window_pending = False
            return 0
        w = self._find_table(start)
        if w is None:
            raise KernelError(errno.EINVAL, f"tce_vfio: no DMA window at {start:#x}")
        self._clear(w, w.start, w.size)
        self.tables[self.tables.index(w)] = None
        return 0

    @handles("VFIO_EEH_PE_OP")
    def eeh_pe_op(self, arg: Any) -> int:
        raise KernelError(errno.ENODEV, "vfio_spapr_iommu_eeh_ioctl: no EEH for this group")

    # -- what simulated devices use --------------------------------------------------------------
    def translate(self, iova: int, size: int, write: bool) -> int:
        """User address backing [iova, iova+size) for a device access; IommuFault otherwise."""
        if size <= 0:
            raise IommuFault(errno.EINVAL, "empty DMA")
        need = TCE_WRITE if write else TCE_READ
        pos, base = iova, None
        while pos < iova + size:
            w = self._find_table(pos)
            tce = None if w is None else w.tces.get((pos - w.start) >> w.page_shift)
            if w is None or tce is None or not tce[1] & need:
                raise IommuFault(errno.EFAULT, f"TCE fault at {pos:#x}")
            page_off = (pos - w.start) & (w.page_size - 1)
            va = tce[0] + page_off
            if base is None:
                base = va
            elif va != base + (pos - iova):
                raise IommuFault(errno.EFAULT, f"IOVA range {iova:#x}+{size:#x} not contiguous")
            pos += w.page_size - page_off
        assert base is not None
        return base


def _field_size(ctype: str, name: str) -> int:
    t = ffi.typeof(ctype)
    for fname, f in t.fields:
        if fname == name:
            return ffi.sizeof(f.type)
    raise KeyError(name)


def install(kernel: MockKernel) -> None:
    """Register the sPAPR TCE IOMMU driver (a POWER machine; see :func:`power_kernel`)."""
    register_iommu_driver(kernel, SpaprTceIommu)


#: BDF and IOMMU group of the edu in the pseries guest (and in :func:`power_kernel`).
POWER_EDU_BDF = "0000:00:00.0"
POWER_EDU_GROUP = 0


class _PowerMachine:
    """Subsystem list entry: VFIO core + sPAPR TCE + the pseries guest's devices."""

    @staticmethod
    def install(kernel: MockKernel) -> None:
        vfio_install(kernel, machine=False)
        install(kernel)
        # edu in a little-endian POWER guest: registers byte-swapped; all-ones DMA mask
        # (-device edu,dma_mask=0xffffffffffffffff)
        edu = make_edu(kernel, POWER_EDU_BDF, byteorder="big", dma_mask=U64)
        add_device(kernel, edu, group=POWER_EDU_GROUP, driver="vfio-pci", reserved=[])


def power_kernel() -> MockKernel:
    """A mock kernel shaped like the POWER9 pseries test guest: VFIO with only the sPAPR TCE
    IOMMU (no type1), and edu at 0000:00:00.0 in IOMMU group 0 bound to vfio-pci."""
    return MockKernel(subsystems=[_PowerMachine])
