"""The sPAPR TCE IOMMU of IBM POWER (v1 and v2) with dynamic DMA windows.

``Container.set_iommu("SPAPR_TCE")`` returns :class:`SpaprTceIommu` (v1),
``set_iommu("SPAPR_TCE_v2")`` :class:`SpaprTceV2Iommu`. Both map into *DMA windows*: the default
32-bit window (TCE_GET_INFO's ``dma32_window_start``/``size``, 4 KiB IOMMU pages) and, on v2,
windows made with :meth:`SpaprTceV2Iommu.create_window` (the 64-bit window lands at
0x800000000000000 on pseries).

* v1 pins at map time; :meth:`SpaprTceIommu.enable` accounts the whole 32-bit window into
  locked_vm first (MAP before ENABLE: EPERM).
* v2 splits pinning from mapping: :meth:`SpaprTceV2Iommu.register` pins and accounts a buffer
  once (VFIO_IOMMU_SPAPR_REGISTER_MEMORY); MAP/UNMAP then only write TCEs and must use
  registered memory. :meth:`SpaprTceV2Iommu.unregister` must name exactly what was registered.

Checked before any syscall (ArgumentError subclasses), because the kernel's own answers are
poor or dangerous there (measured on Linux 6.12, POWER9 pseries guest):

* a range that runs past its window's end: the 6.12 kernel **oopses** in the MAP_DMA error path;
* an IOVA not aligned to the window's page: it WARNs and returns 1 instead of an error;
* registering size 0 gives ENOMEM; a partial/mismatched unregister gives ENOENT;
* unregistering memory that is still mapped returns **0** on 6.12: the container forgets the
  region, which stays pinned and mapped (leaked until the container closes). Older kernels
  answered EBUSY. pyvfio refuses it with :class:`~pyvfio.errors.BusyError` (errno EBUSY, no
  syscall) while its own mappings use the region, so the memory stays registered and usable.

The raw requests (``map_dma``, ``unmap_dma``, ``register_memory``, ``unregister_memory``,
``tce_create``, ``tce_remove``) issue the ioctl as is, for tests of the kernel's rules.

Safety: while a mapping exists the device may read/write the mapped memory at any time; a
registered buffer stays pinned until unregistered. :class:`DmaMapping` and
:class:`RegisteredMemory` keep their buffers alive; do not free or reuse the memory otherwise.

Example (mock, a POWER-shaped machine)::

    >>> from pyvfio.mockkernel.vfio.spapr import power_kernel
    >>> from pyvfio.seam.mock import MockBackend
    >>> from pyvfio.services.dma import DmaBuffer
    >>> from pyvfio.vfio import Container, Group
    >>> with Container(backend=MockBackend(power_kernel())) as c:
    ...     _ = c.attach(Group(0, backend=c.backend))
    ...     iommu = c.set_iommu("SPAPR_TCE_v2")
    ...     buf = DmaBuffer(1 << 16, hugepages=None)
    ...     with iommu.register(buf) as mem, iommu.map(buf, iova=0) as m:
    ...         (iommu.info().dma32_window_size, m.iova, m.size)
    (1073741824, 0, 65536)
"""

from __future__ import annotations

import errno
import functools
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Concatenate, Iterator, ParamSpec, TypeVar

from ..core.fd import Closeable
from .. import ioctls
from ..core.buffer import buffer_span, pin
from ..core.iova import IovaRange
from ..core.mapping import DmaFlags, DmaMapping, MappingTable, as_mapping
from ..errors import (AlignmentError, ArgumentError, BusyError, OverlapError, PyvfioError,
                      RangeError, StateError, register_hint)
from ..uapi import ffi
from ..uapi.args import as_int, new
from ..uapi.pack import TYPE1_DMA_MAP, TYPE1_DMA_UNMAP
from ..util.hexrepr import hex_repr
from .container import Container, IommuBase, register_iommu

PAGE_SIZE = 4096  # the registration granularity (the kernel's PAGE_SIZE on ppc64le 4K kernels)
U64_MAX = (1 << 64) - 1

_SZ_INFO = ffi.sizeof("struct vfio_iommu_spapr_tce_info")
_SZ_REG = ffi.sizeof("struct vfio_iommu_spapr_register_memory")
_SZ_CREATE = ffi.sizeof("struct vfio_iommu_spapr_tce_create")
_SZ_REMOVE = ffi.sizeof("struct vfio_iommu_spapr_tce_remove")
_SZ_MAP = TYPE1_DMA_MAP.size
_SZ_UNMAP = TYPE1_DMA_UNMAP.size
_MAP_DMA = ioctls.VFIO_IOMMU_MAP_DMA
_UNMAP_DMA = ioctls.VFIO_IOMMU_UNMAP_DMA
_pack_map = TYPE1_DMA_MAP.pack
_pack_unmap = TYPE1_DMA_UNMAP.pack
_SZ_EEH = ffi.sizeof("struct vfio_eeh_pe_op")

# sPAPR meanings of MAP/UNMAP errnos (the registered hints of those ops speak of type1)
_MAP_HINTS: dict[int, str] = {
    errno.EPERM: "sPAPR: the container is not enabled (v1: call enable(); v2: register memory "
                 "first)",
    errno.ENXIO: "sPAPR: the IOVA lies in no DMA window (see TCE_GET_INFO and created windows)",
    errno.EINVAL: "sPAPR: not aligned to the window's IOMMU page, no READ/WRITE flag, or (v2) the "
                  "memory is not inside one registered region",
    errno.EFAULT: "sPAPR v1: the user address range is not mapped in this process",
}


@hex_repr('pgsizes')
@dataclass(frozen=True)
class DdwInfo:
    """The dynamic DMA window part of TCE_GET_INFO (v2 only)."""

    pgsizes: int
    max_dynamic_windows_supported: int
    levels: int

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """The IOMMU page sizes a created window may use, smallest first."""
        return tuple(1 << b for b in range(64) if self.pgsizes >> b & 1)


@hex_repr('flags', 'dma32_window_start', 'dma32_window_size')
@dataclass(frozen=True)
class SpaprTceInfo:
    """VFIO_IOMMU_SPAPR_TCE_GET_INFO: the default 32-bit window and, on v2, the DDW limits."""

    flags: int
    dma32_window_start: int
    dma32_window_size: int
    ddw: DdwInfo | None

    @property
    def has_ddw(self) -> bool:
        return bool(self.flags & ioctls.VFIO_IOMMU_SPAPR_INFO_DDW)

    @property
    def iova_ranges(self) -> tuple[IovaRange, ...]:
        """The default 32-bit window as an IOVA range (what DmaMapper allocates from)."""
        return (IovaRange(self.dma32_window_start,
                          self.dma32_window_start + self.dma32_window_size - 1),)

    @property
    def min_pgsize(self) -> int:
        """The default window's IOMMU page size (4 KiB)."""
        return 4096


@hex_repr('start', 'size')
@dataclass(frozen=True)
class DmaWindow:
    """A DMA window: IOVAs ``[start, start+size)`` translated in pages of ``page_size``."""

    start: int
    size: int
    page_shift: int
    levels: int
    default: bool = False

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def end(self) -> int:
        """One past the last IOVA."""
        return self.start + self.size

    def contains(self, iova: int, size: int = 1) -> bool:
        return self.start <= iova and iova + size <= self.end

    def __repr__(self) -> str:
        kind = " default" if self.default else ""
        return (f"DmaWindow({self.start:#x}+{self.size:#x}, page {self.page_size:#x}, "
                f"levels {self.levels}{kind})")


class RegisteredMemory(Closeable):
    """Memory pre-registered with a v2 container: ``vaddr``, ``size``, the ``buffer`` it keeps
    alive and the pyvfio ``mappings`` that use it. ``unregister()`` (or leaving the ``with``
    block) unpins it; BusyError while mappings remain.

    Threads: the handle is only read after creation; unregister it from one thread.
    """

    __slots__ = ("iommu", "vaddr", "size", "buffer", "mappings", "_live", "__weakref__")

    def __init__(self, iommu: "SpaprTceV2Iommu", vaddr: int, size: int, buffer: Any) -> None:
        self.iommu = iommu
        self.vaddr = vaddr
        self.size = size
        self.buffer = buffer
        self.mappings: set[DmaMapping] = set()
        self._live = True

    @property
    def end(self) -> int:
        return self.vaddr + self.size

    @property
    def closed(self) -> bool:
        return not self._live

    def contains(self, vaddr: int, size: int) -> bool:
        return self.vaddr <= vaddr and vaddr + size <= self.end

    def unregister(self) -> None:
        if self._live:
            self.iommu.unregister(self)

    close = unregister


    def __repr__(self) -> str:
        state = "live" if self._live else "unregistered"
        return (f"<RegisteredMemory {self.vaddr:#x}+{self.size:#x} mappings={len(self.mappings)} "
                f"{state}>")


_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="_SpaprBase")


def _locked(fn: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Run the method under its IOMMU object's :attr:`_SpaprBase.lock`."""
    @functools.wraps(fn)
    def under_lock(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return fn(self, *args, **kwargs)
    return under_lock


def _pow2(x: int) -> bool:
    return x > 0 and not x & (x - 1)


class _SpaprBase(MappingTable, IommuBase):
    """What v1 and v2 share: TCE_GET_INFO, windows, MAP/UNMAP, EEH.

    Threads: ``map_dma``/``unmap_dma`` pack a fresh argument per call and may run
    concurrently with anything. ``map``, ``unmap``, ``unmap_all``, ``register``/``unregister``
    and ``create_window``/``remove_window`` may run concurrently from several threads: each
    holds the object's lock (:attr:`lock`, re-entrant) from its checks (which walk
    :attr:`mappings`, :attr:`regions` and the windows) through the ioctl to the bookkeeping, so
    two threads mapping overlapping ranges at once get one mapping and one OverlapError.
    ``info``/``windows`` fill caches (a race stores the same answer). ``close()`` runs alone.
    """

    def __init__(self, container: Container, iommu_type: int) -> None:
        super().__init__(container, iommu_type)
        #: Held by every call that reads and then changes the bookkeeping (see Threads).
        self.lock = threading.RLock()
        self._info: SpaprTceInfo | None = None
        #: Live mappings made through map(), by IOVA.
        self.mappings: dict[int, DmaMapping] = {}
        self._windows: list[DmaWindow] | None = None

    # -- info ---------------------------------------------------------------------------------
    def info(self, *, refresh: bool = False) -> SpaprTceInfo:
        """VFIO_IOMMU_SPAPR_TCE_GET_INFO (cached; ``refresh=True`` re-reads).

        Errors: ENXIO (no group attached), EINVAL (argsz too small).
        """
        if self._info is not None and not refresh:
            return self._info
        info = ffi.new("struct vfio_iommu_spapr_tce_info *")
        info.argsz = _SZ_INFO
        self._ioctl(ioctls.VFIO_IOMMU_SPAPR_TCE_GET_INFO, info)
        ddw = None
        if info.flags & ioctls.VFIO_IOMMU_SPAPR_INFO_DDW:
            ddw = DdwInfo(int(info.ddw.pgsizes), int(info.ddw.max_dynamic_windows_supported),
                          int(info.ddw.levels))
        self._info = SpaprTceInfo(int(info.flags), int(info.dma32_window_start),
                                  int(info.dma32_window_size), ddw)
        return self._info

    @property
    def windows(self) -> tuple[DmaWindow, ...]:
        """The DMA windows as pyvfio knows them (the default one until removed, created ones)."""
        if self._windows is None:
            i = self.info()
            self._windows = [DmaWindow(i.dma32_window_start, i.dma32_window_size, 12, 1, True)]
        return tuple(self._windows)

    def iova_ranges(self) -> tuple[IovaRange, ...]:
        """Every current window as an IovaRange (inclusive end), e.g. for an IovaAllocator."""
        return tuple(IovaRange(w.start, w.end - 1) for w in self.windows)

    def window_of(self, iova: int, size: int = 1) -> DmaWindow | None:
        """The window holding all of ``[iova, iova+size)``, or None."""
        for w in self.windows:
            if w.contains(iova, size):
                return w
        return None

    # -- raw requests ---------------------------------------------------------------------------
    def map_dma(self, vaddr: int, iova: int, size: int,
                flags: int = DmaFlags.READ | DmaFlags.WRITE) -> int:
        """VFIO_IOMMU_MAP_DMA as is (no pre-checks); returns the ioctl's value.

        Errors: EPERM (v1 not enabled / v2 nothing registered yet), ENXIO (IOVA in no window),
        EINVAL (unaligned, no R/W flag, v2: memory not registered). A range running past the
        window end oopses Linux 6.12: use :meth:`map`, which refuses it.
        """
        try:  # a fresh packed argument per call (no shared struct between threads)
            buf = bytearray(_pack_map(_SZ_MAP, flags, vaddr, iova, size))
        except struct.error:
            raise RangeError(f"map_dma arguments out of range: vaddr={vaddr!r} iova={iova!r} "
                             f"size={size!r} flags={flags!r} (unsigned 64/32-bit)") from None
        try:
            return self._ioctl(_MAP_DMA, buf)
        except PyvfioError as e:
            e.hint = _MAP_HINTS.get(e.errno or 0) or e.hint
            raise

    def unmap_dma(self, iova: int, size: int) -> None:
        """VFIO_IOMMU_UNMAP_DMA as is: clears the TCEs of ``[iova, iova+size)`` (nothing mapped
        there is fine; the kernel reports no size). Errors: EPERM (not enabled), ENXIO (no
        window), EINVAL (size not page aligned)."""
        try:
            buf = bytearray(_pack_unmap(_SZ_UNMAP, 0, iova, size))
        except struct.error:
            raise RangeError(f"unmap_dma arguments out of range: iova={iova!r} size={size!r}") from None
        try:
            self._ioctl(_UNMAP_DMA, buf)
        except PyvfioError as e:
            e.hint = _MAP_HINTS.get(e.errno or 0) or e.hint
            raise

    # -- checked API ----------------------------------------------------------------------------
    def check(self, iova: int, size: int, vaddr: int | None = None) -> DmaWindow:
        """Raise ArgumentError subclasses for what the kernel would refuse or mishandle; returns
        the window of ``[iova, iova+size)``."""
        iova, size = as_int(iova, "iova"), as_int(size, "size")
        if vaddr is not None:
            vaddr = as_int(vaddr, "vaddr")
        if size <= 0:
            raise RangeError(f"size must be positive, not {size}")
        if iova < 0 or iova + size - 1 > U64_MAX:
            raise RangeError(f"IOVA range {iova:#x}+{size:#x} wraps around")
        w = self.window_of(iova)
        if w is None:
            known = ", ".join(f"{x.start:#x}-{x.end - 1:#x}" for x in self.windows) or "none"
            raise RangeError(f"IOVA {iova:#x} is in no DMA window (windows: {known})")
        if not w.contains(iova, size):
            raise RangeError(f"IOVA range {iova:#x}-{iova + size - 1:#x} runs past the end of "
                             f"{w!r} (Linux 6.12 oopses on such a map)")
        for what, v in (("iova", iova), ("size", size), ("vaddr", vaddr)):
            if v is not None and v & (w.page_size - 1):
                raise AlignmentError(f"{what} {v:#x} is not aligned to the window's IOMMU page "
                                     f"size {w.page_size:#x}")
        for m in self.mappings.values():
            if m.iova < iova + size and iova < m.iova + m.size:
                raise OverlapError(f"IOVA range {iova:#x}+{size:#x} overlaps {m!r} (the kernel "
                                   "would silently replace its TCEs)")
        return w

    def _require_enabled(self) -> None:
        """Subclasses: raise StateError when MAP would get EPERM."""

    def map(self, buffer: Any, iova: int, *, size: int | None = None, offset: int = 0,
            read: bool = True, write: bool = True) -> DmaMapping:
        """Map ``buffer`` (a DmaBuffer, an object with .addr/.size, or an int address with
        ``size=``) at ``iova``: checks, then VFIO_IOMMU_MAP_DMA. Returns a DmaMapping that keeps
        ``buffer`` alive until unmapped. ``read``: the device may read; ``write``: may write."""
        if self.closed:
            raise StateError("this IOMMU is closed")
        vaddr, n = buffer_span(buffer, size, offset)
        if not (read or write):
            raise ArgumentError("a mapping needs read=True and/or write=True")
        flags = (DmaFlags.READ if read else DmaFlags(0)) | (DmaFlags.WRITE if write else DmaFlags(0))
        with self.lock:  # check, MAP_DMA and bookkeeping as one step (see Threads)
            self.check(iova, n, vaddr)
            self._require_enabled()
            region = self._region_for(vaddr, n)
            self.map_dma(vaddr, iova, n, flags)
            mapping = DmaMapping(self, iova, n, vaddr, flags, buffer)
            try:
                pin(buffer, mapping)
            except BaseException:  # closed meanwhile: do not leave the TCEs behind
                self.unmap_dma(iova, n)
                raise
            self.mappings[iova] = mapping
            if region is not None:
                region.mappings.add(mapping)
                mapping.state["spapr_region"] = region
        return mapping

    def _region_for(self, vaddr: int, size: int) -> "RegisteredMemory | None":
        return None

    def _forget(self, mapping: DmaMapping) -> None:
        region = mapping.state.pop("spapr_region", None)
        if region is not None:
            region.mappings.discard(mapping)
        super()._forget(mapping)

    def unmap(self, mapping: DmaMapping) -> None:
        """VFIO_IOMMU_UNMAP_DMA of exactly ``mapping`` (idempotent)."""
        if not as_mapping(mapping)._live:
            return
        if mapping.iommu is not self:
            raise ArgumentError(f"{mapping!r} belongs to another IOMMU")
        with self.lock:
            if not mapping._live:  # another thread unmapped it meanwhile
                return
            self.unmap_dma(mapping.iova, mapping.size)
            self._forget(mapping)

    def unmap_all(self) -> int:
        """Unmap every mapping made through this object; returns the bytes unmapped."""
        done = 0
        with self.lock:
            for m in sorted(self.mappings.values(), key=lambda m: m.iova):
                self.unmap(m)
                done += m.size
        return done

    # -- EEH --------------------------------------------------------------------------------------
    def eeh_supported(self) -> bool:
        """VFIO_CHECK_EXTENSION(VFIO_EEH) > 0 (0 in the QEMU pseries guest)."""
        return self.container.check_extension(ioctls.VFIO_EEH) > 0

    def eeh_pe_op(self, op: int) -> int:
        """VFIO_EEH_PE_OP with ``op`` (VFIO_EEH_PE_ENABLE, ..._GET_STATE, ..._RESET_HOT...) on
        every group of the container; returns the ioctl's value (a state for GET_STATE).

        Errors: ENODEV (the platform has no EEH for the group), EINVAL (unknown op).
        """
        arg = new("struct vfio_eeh_pe_op", argsz=_SZ_EEH, op=op)
        return self._ioctl(ioctls.VFIO_EEH_PE_OP, arg)

    def __iter__(self) -> Iterator[DmaMapping]:
        return iter(list(self.mappings.values()))


@register_iommu
class SpaprTceIommu(_SpaprBase):
    """sPAPR TCE v1: ENABLE (accounts the 32-bit window), MAP/UNMAP pin per page, DISABLE.

    Threads: as :class:`_SpaprBase`; ``enable``/``disable`` from one thread, before mapping.
    """

    TYPES = (ioctls.VFIO_SPAPR_TCE_IOMMU,)

    def __init__(self, container: Container, iommu_type: int) -> None:
        super().__init__(container, iommu_type)
        self.enabled = False

    def enable(self) -> None:
        """VFIO_IOMMU_ENABLE: account the whole 32-bit window into locked_vm; MAP works after.

        Errors: EBUSY (already enabled), ENODEV (no group), ENOMEM (window over
        RLIMIT_MEMLOCK without CAP_IPC_LOCK: see hint).
        """
        self._ioctl(ioctls.VFIO_IOMMU_ENABLE, 0)
        self.enabled = True

    def disable(self) -> None:
        """VFIO_IOMMU_DISABLE (idempotent): give the accounting back; MAP gets EPERM after."""
        self._ioctl(ioctls.VFIO_IOMMU_DISABLE, 0)
        self.enabled = False

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise StateError("sPAPR TCE v1: call enable() before map() (the kernel answers EPERM)")

    def close(self) -> None:
        """Unmap every pyvfio mapping and disable (idempotent)."""
        try:
            if not self.container.closed:
                if self.mappings:
                    self.unmap_all()
                if self.enabled:
                    self.disable()
        finally:
            for m in list(self.mappings.values()):
                self._forget(m)
            self.enabled = False

    def __repr__(self) -> str:
        return f"<SpaprTceIommu v1 enabled={self.enabled} mappings={len(self.mappings)}>"


@register_iommu
class SpaprTceV2Iommu(_SpaprBase):
    """sPAPR TCE v2: registered (pre-pinned) memory, MAP/UNMAP into windows, created windows.

    Threads: as :class:`_SpaprBase`; ``register``/``unregister`` and ``create_window`` /
    ``remove_window`` update :attr:`regions` and the window list unlocked: one thread at a time.
    """

    TYPES = (ioctls.VFIO_SPAPR_TCE_v2_IOMMU,)

    def __init__(self, container: Container, iommu_type: int) -> None:
        super().__init__(container, iommu_type)
        #: Memory registered through register(), by vaddr.
        self.regions: dict[int, RegisteredMemory] = {}
        self._created: list[DmaWindow] = []

    # -- raw requests ---------------------------------------------------------------------------
    def register_memory(self, vaddr: int, size: int) -> None:
        """VFIO_IOMMU_SPAPR_REGISTER_MEMORY as is: pin and account ``[vaddr, vaddr+size)``.

        Errors: EINVAL (unaligned, wraps, overlaps another region), EBUSY (exactly this region
        is registered), ENOMEM (size 0, or RLIMIT_MEMLOCK), EFAULT (not mapped).
        """
        r = new("struct vfio_iommu_spapr_register_memory", argsz=_SZ_REG, vaddr=vaddr, size=size)
        self._ioctl(ioctls.VFIO_IOMMU_SPAPR_REGISTER_MEMORY, r)

    def unregister_memory(self, vaddr: int, size: int) -> None:
        """VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY as is.

        Errors: ENOENT (no region with exactly this vaddr and size in this container), EPERM
        (nothing was ever registered), EINVAL (unaligned). While the region is still mapped,
        Linux 6.12 answers 0 and leaks the registration: use :meth:`unregister`, which refuses.
        """
        r = new("struct vfio_iommu_spapr_register_memory", argsz=_SZ_REG, vaddr=vaddr, size=size)
        self._ioctl(ioctls.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, r)

    def tce_create(self, page_shift: int, window_size: int, levels: int = 1) -> int:
        """VFIO_IOMMU_SPAPR_TCE_CREATE as is; returns the window's start address.

        Errors: ENOSPC (no free window), EINVAL (page size not offered, window size not a power
        of two or too large, too many levels), EPERM (window #0 while #1 exists).
        """
        c = new("struct vfio_iommu_spapr_tce_create", argsz=_SZ_CREATE, page_shift=page_shift,
                window_size=window_size, levels=levels)
        self._ioctl(ioctls.VFIO_IOMMU_SPAPR_TCE_CREATE, c)
        return int(c.start_addr)

    def tce_remove(self, start_addr: int) -> None:
        """VFIO_IOMMU_SPAPR_TCE_REMOVE as is: removes the window *containing* ``start_addr``
        (clearing its TCEs). Errors: EINVAL (no window there)."""
        r = new("struct vfio_iommu_spapr_tce_remove", argsz=_SZ_REMOVE, start_addr=start_addr)
        self._ioctl(ioctls.VFIO_IOMMU_SPAPR_TCE_REMOVE, r)

    # -- registered memory ----------------------------------------------------------------------
    @_locked
    def register(self, buffer: Any, *, size: int | None = None, offset: int = 0) -> RegisteredMemory:
        """Pre-register ``buffer`` (pin + account it once): checks, then REGISTER_MEMORY.

        Refused before the syscall: size 0, vaddr/size not page aligned, overlap with memory
        registered through this object. Kernel errors as :meth:`register_memory`.
        """
        if self.closed:
            raise StateError("this IOMMU is closed")
        vaddr, n = buffer_span(buffer, size, offset)
        if n <= 0:
            raise RangeError("cannot register 0 bytes (the kernel answers ENOMEM)")
        for what, v in (("vaddr", vaddr), ("size", n)):
            if v & (PAGE_SIZE - 1):
                raise AlignmentError(f"{what} {v:#x} is not aligned to the page size {PAGE_SIZE:#x}")
        if vaddr + n - 1 > U64_MAX:
            raise RangeError(f"range {vaddr:#x}+{n:#x} wraps around")
        for r in self.regions.values():
            if r.vaddr < vaddr + n and vaddr < r.end:
                if (r.vaddr, r.size) == (vaddr, n):
                    raise OverlapError(f"{r!r} is already registered (the kernel answers EBUSY)")
                raise OverlapError(f"range {vaddr:#x}+{n:#x} overlaps {r!r} (the kernel answers "
                                   "EINVAL): register disjoint ranges")
        self.register_memory(vaddr, n)
        region = RegisteredMemory(self, vaddr, n, buffer)
        self.regions[vaddr] = region
        return region

    @_locked
    def unregister(self, region: RegisteredMemory) -> None:
        """Unpin ``region`` (VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY with its exact vaddr and size).

        BusyError (EBUSY, before the syscall) while pyvfio mappings use it: unmap them first.
        The region stays registered and usable; retry after unmapping. (Linux 6.12 would answer
        0 and leak the pin; older kernels answered EBUSY.) Idempotent once unregistered.
        """
        if region._live is False:
            return
        if region.iommu is not self or self.regions.get(region.vaddr) is not region:
            raise ArgumentError(f"{region!r} was not registered through this IOMMU")
        if region.mappings:
            live = ", ".join(f"{m.iova:#x}+{m.size:#x}" for m in sorted(region.mappings, key=lambda m: m.iova))
            raise BusyError(errno.EBUSY, f"registered memory {region.vaddr:#x}+{region.size:#x} "
                            f"is still mapped at IOVA {live}",
                            op=ioctls.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY.name, path=self.container.path,
                            hint="unmap those mappings first; the memory stays registered and "
                                 "usable (Linux 6.12 would accept the unregister and leak the pin)")
        self.unregister_memory(region.vaddr, region.size)
        region._live = False
        del self.regions[region.vaddr]

    def unregister_range(self, vaddr: int, size: int) -> None:
        """Unregister by address: ``(vaddr, size)`` must be exactly a region registered through
        this object (RangeError before the syscall for a partial or mismatched range, which the
        kernel answers with ENOENT)."""
        region = self.regions.get(vaddr)
        if region is None or region.size != size:
            near = [r for r in self.regions.values() if r.vaddr < vaddr + max(size, 1) and vaddr < r.end]
            what = (f"; it overlaps {', '.join(repr(r) for r in near)}: unregister exactly what was "
                    "registered" if near else "")
            raise RangeError(f"{vaddr:#x}+{size:#x} is not a registered region{what}")
        self.unregister(region)

    def region_of(self, vaddr: int, size: int = 1) -> RegisteredMemory | None:
        """The registered region holding all of ``[vaddr, vaddr+size)``."""
        for r in self.regions.values():
            if r.contains(vaddr, size):
                return r
        return None

    def _require_enabled(self) -> None:
        pass  # v2: the region check below says more than the kernel's EPERM

    def _region_for(self, vaddr: int, size: int) -> RegisteredMemory | None:
        region = self.region_of(vaddr, size)
        if region is None:
            regs = ", ".join(f"{r.vaddr:#x}+{r.size:#x}" for r in self.regions.values()) or "none"
            raise RangeError(f"memory {vaddr:#x}+{size:#x} is not inside one registered region "
                             f"(registered: {regs}); register() it first (the kernel answers "
                             "EPERM before any registration, EINVAL after)")
        return region

    # -- windows ------------------------------------------------------------------------------------
    @_locked
    def create_window(self, page_size: int, window_size: int, *, levels: int = 1) -> DmaWindow:
        """VFIO_IOMMU_SPAPR_TCE_CREATE after checking the page size against ddw.pgsizes, the
        window size (a power of two, at least one page) and ``levels`` against ddw.levels.
        Returns the new window (the 64-bit one starts at 0x800000000000000 on pseries).

        Note: without hugetlbfs backing, registered memory has 4 KiB pages, and a window with
        larger IOMMU pages cannot map it (EINVAL): use page_size=4096 for ordinary buffers.
        """
        page_size, window_size = as_int(page_size, "page size"), as_int(window_size, "window size")
        levels = as_int(levels, "levels")
        ddw = self.info().ddw
        if ddw is None:
            raise ArgumentError("this container reports no dynamic DMA windows (TCE_GET_INFO "
                                "without the DDW flag)")
        if not _pow2(page_size) or not ddw.pgsizes & page_size:
            raise ArgumentError(f"page size {page_size:#x} is not offered; allowed: "
                                f"{', '.join(hex(p) for p in ddw.page_sizes)}")
        if not _pow2(window_size) or window_size < page_size:
            raise ArgumentError(f"window size {window_size:#x} must be a power of two of at least "
                                f"one page ({page_size:#x})")
        if not 1 <= levels <= max(ddw.levels, 1):
            raise ArgumentError(f"levels {levels} must be in 1..{max(ddw.levels, 1)}")
        start = self.tce_create(page_size.bit_length() - 1, window_size, levels)
        w = DmaWindow(start, window_size, page_size.bit_length() - 1, levels)
        self._windows = [*self.windows, w]
        self._created.append(w)
        return w

    @_locked
    def remove_window(self, window: DmaWindow) -> None:
        """VFIO_IOMMU_SPAPR_TCE_REMOVE of ``window`` (a created one or the default one).

        BusyError (before the syscall) while pyvfio mappings use it: the kernel would clear
        their TCEs under them.
        """
        if window not in self.windows:
            raise ArgumentError(f"{window!r} is not a window of this container")
        used = [m for m in self.mappings.values() if window.contains(m.iova)]
        if used:
            raise BusyError(errno.EBUSY, f"{window!r} still holds {len(used)} mapping(s)",
                            op=ioctls.VFIO_IOMMU_SPAPR_TCE_REMOVE.name, path=self.container.path,
                            hint="unmap them first")
        self.tce_remove(window.start)
        self._windows = [w for w in self.windows if w != window]
        if window in self._created:
            self._created.remove(window)

    def close(self) -> None:
        """Unmap every pyvfio mapping, remove created windows, unregister every region
        (idempotent; the container closing releases the rest)."""
        errors: list[BaseException] = []
        if not self.container.closed:
            try:
                self.unmap_all()
            except PyvfioError as e:
                errors.append(e)
            for w in list(self._created):
                try:
                    self.remove_window(w)
                except PyvfioError as e:
                    errors.append(e)
            for r in list(self.regions.values()):
                try:
                    self.unregister(r)
                except PyvfioError as e:
                    errors.append(e)
        for m in list(self.mappings.values()):
            self._forget(m)
        for r in self.regions.values():
            r._live = False
        self.regions.clear()
        self._created.clear()
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return (f"<SpaprTceV2Iommu regions={len(self.regions)} windows={len(self.windows) if self._windows else '?'} "
                f"mappings={len(self.mappings)}>")


register_hint(ioctls.VFIO_IOMMU_ENABLE.name, errno.ENOMEM,
              "sPAPR v1 accounts the whole 32-bit DMA window into locked memory at ENABLE: raise "
              "RLIMIT_MEMLOCK (ulimit -l) to at least the window size or run with CAP_IPC_LOCK")
register_hint(ioctls.VFIO_IOMMU_SPAPR_REGISTER_MEMORY.name, errno.ENOMEM,
              "registering pins and accounts the memory: raise RLIMIT_MEMLOCK or run with "
              "CAP_IPC_LOCK (a size of 0 also gives ENOMEM)")
register_hint(ioctls.VFIO_IOMMU_SPAPR_REGISTER_MEMORY.name, errno.EBUSY,
              "exactly this range is already registered in this container")
register_hint(ioctls.VFIO_IOMMU_SPAPR_REGISTER_MEMORY.name, errno.EINVAL,
              "vaddr/size not page aligned, or the range overlaps another registered region")
register_hint(ioctls.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY.name, errno.ENOENT,
              "no region with exactly this vaddr and size is registered in this container "
              "(unregister exactly what was registered)")
register_hint(ioctls.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY.name, errno.EBUSY,
              "pages of the region are still mapped (kernels before 5.1 answer EBUSY; 6.x accept "
              "and leak the pin): unmap them first")
register_hint(ioctls.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY.name, errno.EPERM,
              "nothing was ever registered in this container")
register_hint(ioctls.VFIO_IOMMU_SPAPR_TCE_CREATE.name, errno.ENOSPC,
              "no free DMA window: the default 32-bit window counts; remove one first")
register_hint(ioctls.VFIO_IOMMU_SPAPR_TCE_CREATE.name, errno.EPERM,
              "window #0 cannot be re-created while the 64-bit window exists")
register_hint(ioctls.VFIO_EEH_PE_OP.name, errno.ENODEV, "the platform offers no EEH for this group")

__all__ = ["SpaprTceIommu", "SpaprTceV2Iommu", "SpaprTceInfo", "DdwInfo", "DmaWindow",
           "RegisteredMemory"]
