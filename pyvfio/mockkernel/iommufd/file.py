"""/dev/iommu: one iommufd context (drivers/iommu/iommufd/main.c, ioas.c, hw_pagetable.c, device.c).
"""

from __future__ import annotations

import errno
from typing import Any

from ... import ioctls as I
from ...uapi import ffi
from ..core import KernelError, MockFile, MockKernel, handles
from ..vfio import state as vfio_state
from ..memory import read_user, user_mapped, write_user
from .objects import ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER, Area, Hwpt, IOMMU_READ, IOMMU_WRITE, Idev, Ioas, Obj, PAGE, Pages, U64_MAX, ULONG_MAX, VTD_CAP_REG, VTD_ECAP_REG, state


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
        done: list[tuple[Area, set[int]]] = []
        try:
            for a in areas:
                if a.filled:
                    continue
                lo = a.vaddr(a.iova) & ~(PAGE - 1)
                hi = (a.vaddr(a.last) | (PAGE - 1)) + 1
                if not user_mapped(lo, hi - lo):
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
            if not user_mapped(int(cmd.allowed_iovas),
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
            if not user_mapped(int(cmd.allowed_iovas), n * ffi.sizeof("struct iommu_iova_range")):
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
            if not user_mapped(int(cmd.data_uptr), want):
                raise KernelError(errno.EFAULT, "iommufd: data_uptr not mapped")
            out = (data + bytes(want))[:want]
            write_user(int(cmd.data_uptr), out)
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
        if not user_mapped(int(cmd.data), nbytes):
            raise KernelError(errno.ENOMEM, "iommufd: bitmap memory not mapped")
        words = bytearray(read_user(int(cmd.data), nbytes))
        hits = sorted(p for p in hwpt.dirty if iova <= p * PAGE <= last)
        for p in hits:
            if not hwpt.ioas.areas_in(p * PAGE, p * PAGE):
                continue
            bit = (p * PAGE - iova) // pgsize
            words[bit // 8] |= 1 << (bit % 8)
        write_user(int(cmd.data), bytes(words))
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


