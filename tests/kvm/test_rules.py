"""The kernel's KVM errno rules, each observed on the real /dev/kvm and on the mock kernel.

Raw Vm methods issue the ioctl with exactly the given arguments (no pyvfio validation), so what
is checked here is the kernel's answer. Rules from virt/kvm/kvm_main.c (__kvm_set_memory_region,
kvm_get_dirty_log_protect, kvm_clear_dirty_log_protect, kvm_vm_ioctl_enable_dirty_log_ring),
virt/kvm/vfio.c and virt/kvm/eventfd.c.
"""

from __future__ import annotations

import mmap
import os

import pytest
from scenarios.kvm import err

from pyvfio import ioctls as I
from pyvfio.kvm import GuestMemory
from pyvfio.core.bitmap import bytes_for

pytestmark = pytest.mark.backends("mock", "kvm")

PAGE = mmap.PAGESIZE
LOG = I.KVM_MEM_LOG_DIRTY_PAGES
RO = I.KVM_MEM_READONLY
GMEM = I.KVM_MEM_GUEST_MEMFD


@pytest.fixture
def mem(backend):
    m = GuestMemory.anonymous(1 << 20, backend=backend)
    yield m
    m.users = 0
    m.close()


# -- memslots -----------------------------------------------------------------------------------
def test_memslot_flags_rules(vm, mem):
    r = vm.set_user_memory_region
    assert err(r, 0, 0x8, 0, PAGE, mem.addr) == "EINVAL"          # unknown flag
    assert err(r, 0, GMEM, 0, PAGE, mem.addr) == "EINVAL"         # GUEST_MEMFD needs REGION2
    assert err(r, 0, LOG | RO, 0, PAGE, mem.addr) == "ok"        # READONLY exists on x86


def test_memslot_alignment_and_range_rules(vm, mem):
    r = vm.set_user_memory_region
    assert err(r, 0, 0, 0x800, PAGE, mem.addr) == "EINVAL"        # gpa not page aligned
    assert err(r, 0, 0, 0, PAGE + 1, mem.addr) == "EINVAL"        # size not page aligned
    assert err(r, 0, 0, 0, PAGE, mem.addr + 8) == "EINVAL"        # hva not page aligned
    assert err(r, 0, 0, 0, 2 * PAGE, 0x7FFF_FFFF_F000 - PAGE) == "EINVAL"  # hva beyond user space
    assert err(r, 0, 0, (1 << 64) - PAGE, 2 * PAGE, mem.addr) == "EINVAL"  # gpa + size overflows
    assert err(r, 0, 0, 1 << 52, PAGE, mem.addr) == "EINVAL"      # beyond the guest phys space
    assert err(r, 0, 0, (1 << 52) - PAGE, PAGE, mem.addr) == "ok"  # the last page is fine
    assert err(r, 0, 0, (1 << 52) - PAGE, 0, mem.addr) == "ok"


def test_memslot_id_rules(vm, mem):
    r = vm.set_user_memory_region
    nslots = vm.max_slots
    assert nslots == 32764
    assert err(r, nslots, 0, 0, PAGE, mem.addr) == "EINVAL"       # beyond KVM_USER_MEM_SLOTS
    assert err(r, nslots - 1, 0, 0, PAGE, mem.addr) == "ok"
    assert vm.address_spaces == 1
    assert err(r, 1 << 16, 0, 0x100000, PAGE, mem.addr) == "EINVAL"  # address space 1
    assert err(r, 5, 0, 0, 0, mem.addr) == "EINVAL"               # delete of a missing slot
    assert err(r, nslots - 1, 0, 0, 0, mem.addr) == "ok"          # delete
    assert err(r, nslots - 1, 0, 0, 0, mem.addr) == "EINVAL"      # ... twice


def test_memslot_modify_rules(vm, mem):
    r = vm.set_user_memory_region
    size = 0x40000
    assert err(r, 0, 0, 0, size, mem.addr) == "ok"
    assert err(r, 0, 0, 0, size, mem.addr) == "ok"                # no change
    assert err(r, 0, 0, 0, 2 * size, mem.addr) == "EINVAL"        # size change
    assert err(r, 0, 0, 0, size, mem.addr + PAGE) == "EINVAL"     # hva change
    assert err(r, 0, RO, 0, size, mem.addr) == "EINVAL"           # READONLY toggle
    assert err(r, 0, LOG, 0, size, mem.addr) == "ok"              # flags-only: dirty logging
    assert err(r, 0, LOG, 0x100000, size, mem.addr) == "ok"       # move
    assert err(r, 0, 0, 0x100000, size, mem.addr) == "ok"         # logging off


def test_memslot_overlap_rules(vm, mem):
    r = vm.set_user_memory_region
    assert err(r, 0, 0, 0x10000, 0x10000, mem.addr) == "ok"
    assert err(r, 1, 0, 0x1F000, 0x2000, mem.addr) == "EEXIST"    # tail overlap
    assert err(r, 1, 0, 0x0F000, 0x2000, mem.addr) == "EEXIST"    # head overlap
    assert err(r, 1, 0, 0x11000, 0x1000, mem.addr) == "EEXIST"    # inside
    assert err(r, 1, 0, 0x20000, 0x1000, mem.addr) == "ok"        # adjacent
    assert err(r, 1, 0, 0x1F000, 0x1000, mem.addr) == "EEXIST"    # move onto slot 0
    assert err(r, 1, 0, 0x0F000, 0x1000, mem.addr) == "ok"        # move next to it


# -- dirty logs ----------------------------------------------------------------------------------
def test_get_dirty_log_rules(vm, mem):
    r = vm.set_user_memory_region
    buf = mem.addr + 0x80000
    assert err(r, 0, 0, 0, 0x40000, mem.addr) == "ok"
    assert err(vm.get_dirty_log, 0, buf) == "ENOENT"             # slot without logging
    assert err(vm.get_dirty_log, 7, buf) == "ENOENT"             # no such slot
    assert err(vm.get_dirty_log, 40000, buf) == "EINVAL"         # id out of range
    assert err(vm.get_dirty_log, 1 << 16, buf) == "EINVAL"       # address space out of range
    assert err(vm.clear_dirty_log, 0, 0, 64, buf) == "ENOENT"
    assert err(r, 0, LOG, 0, 0x40000, mem.addr) == "ok"
    assert err(vm.get_dirty_log, 0, buf) == "ok"


def test_dirty_bitmap_size_rule(vm, backend):
    """GET writes ALIGN(npages, 64) / 8 bytes: a buffer one word short faults (EFAULT)."""
    npages = 184
    need = bytes_for(npages)
    assert need == 24
    data = GuestMemory.anonymous(npages * PAGE, backend=backend)
    buf = mmap.mmap(-1, 2 * PAGE)
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) == 0  # guard page
    try:
        vm.set_user_memory_region(0, LOG, 0, npages * PAGE, data.addr)
        assert err(vm.get_dirty_log, 0, base + PAGE - need) == "ok"
        assert err(vm.get_dirty_log, 0, base + PAGE - need + 8) == "EFAULT"
        assert err(vm.clear_dirty_log, 0, 0, npages, base + PAGE - need) == "ok"
        assert err(vm.clear_dirty_log, 0, 0, npages, base + PAGE - need + 8) == "EFAULT"
        vm.set_user_memory_region(0, LOG, 0, 0, data.addr)
    finally:
        ctypes.CDLL(None).mprotect(ctypes.c_void_p(base + PAGE), PAGE, 3)
        del base
        buf.close()
        data.close()


def test_clear_dirty_log_alignment_rules(vm, mem):
    npages = 184  # 2 * 64 + 56
    buf = mem.addr + 0xF0000
    vm.set_user_memory_region(0, LOG, 0, npages * PAGE, mem.addr)
    c = vm.clear_dirty_log
    assert err(c, 0, 1, 64, buf) == "EINVAL"          # first_page not a multiple of 64
    assert err(c, 0, 32, 64, buf) == "EINVAL"
    assert err(c, 0, 0, 10, buf) == "EINVAL"          # num_pages % 64 without reaching the end
    assert err(c, 0, 64, 100, buf) == "EINVAL"
    assert err(c, 0, 0, 64, buf) == "ok"
    assert err(c, 0, 64, 64, buf) == "ok"
    assert err(c, 0, 128, 56, buf) == "ok"            # tail: reaches the slot end
    assert err(c, 0, 64, 120, buf) == "ok"
    assert err(c, 0, 0, npages, buf) == "ok"
    assert err(c, 0, 128, 57, buf) == "EINVAL"        # beyond the slot
    assert err(c, 0, 0, npages + 1, buf) == "EINVAL"
    assert err(c, 0, 192, 0, buf) == "EINVAL"         # first_page beyond npages
    assert err(c, 0, 0, 0, buf) == "ok"               # empty


def test_manual_protect_cap_rules(vm):
    cap = I.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
    assert vm.check_extension(cap) == 3
    assert err(vm.enable_cap, cap, I.KVM_DIRTY_LOG_INITIALLY_SET) == "EINVAL"  # needs ENABLE
    assert err(vm.enable_cap, cap, 8) == "EINVAL"
    assert err(vm.enable_cap, cap, 1, flags=1) == "EINVAL"
    assert err(vm.enable_cap, 9999) == "EINVAL"
    assert err(vm.enable_cap, cap, 3) == "ok"
    assert err(vm.enable_cap, cap, 0) == "ok"


def test_dirty_ring_rules(kvm, mem):
    ring = I.KVM_CAP_DIRTY_LOG_RING
    limit = kvm.check_extension(ring)
    if not limit:
        pytest.skip("no KVM_CAP_DIRTY_LOG_RING on this kernel")
    with kvm.create_vm() as vm:
        assert err(vm.enable_cap, ring, 0) == "EINVAL"
        assert err(vm.enable_cap, ring, 3 * PAGE) == "EINVAL"   # not a power of two
        assert err(vm.enable_cap, ring, 2048) == "EINVAL"             # below a page
        assert err(vm.enable_cap, ring, limit * 2) == "E2BIG"
        assert err(vm.enable_cap, ring, PAGE * 4) == "ok"
        assert err(vm.enable_cap, ring, PAGE * 4) == "EINVAL"         # once
        vm.set_user_memory_region(0, LOG, 0, 0x40000, mem.addr)
        assert err(vm.get_dirty_log, 0, mem.addr + 0x80000) == "ENXIO"
        assert err(vm.clear_dirty_log, 0, 0, 64, mem.addr + 0x80000) == "ENXIO"
        assert err(vm.reset_dirty_rings) == "ok"
    with kvm.create_vm() as vm:
        vm.create_vcpu()
        assert err(vm.enable_cap, ring, PAGE * 4) == "EINVAL"         # after a vCPU


# -- VM, vCPU, irqchip ----------------------------------------------------------------------------
def test_vm_and_vcpu_rules(kvm):
    assert err(kvm.create_vm, 1) == "EINVAL"  # no such VM type here
    with kvm.create_vm() as vm:
        assert err(vm.create_vcpu, 4096) == "EINVAL"
        assert err(vm.create_vcpu, 0) == "ok"
        assert err(vm._ioctl, I.KVM_CREATE_VCPU, 0) == "EEXIST"
        assert err(vm.create_irqchip) == "EINVAL"   # after vCPUs
    with kvm.create_vm() as vm:
        assert err(vm.create_irqchip) == "ok"
        assert err(vm.create_irqchip) == "EEXIST"


# -- the KVM VFIO device ------------------------------------------------------------------------
def test_vfio_device_rules(vm):
    assert err(vm.create_device, I.KVM_DEV_TYPE_VFIO, test=True) == "ok"
    assert err(vm.create_device, 99, test=True) == "ENODEV"
    dev = vm.create_vfio_device()
    assert err(vm.create_device, I.KVM_DEV_TYPE_VFIO) == "EBUSY"   # one per VM
    ev = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        assert err(dev.add_file, ev) == "EINVAL"                    # not a VFIO file
        assert err(dev.add_file, 987) == "EBADF"
        assert err(dev.add_file, -1) == "EBADF"
        assert err(dev.del_file, ev) == "ENOENT"                    # never added
        assert dev.has_attr(I.KVM_DEV_VFIO_FILE, I.KVM_DEV_VFIO_FILE_ADD)
        assert dev.has_attr(I.KVM_DEV_VFIO_FILE, I.KVM_DEV_VFIO_FILE_DEL)
        assert not dev.has_attr(I.KVM_DEV_VFIO_FILE, 3)
        assert not dev.has_attr(2, 1)
        assert err(dev.set_attr, 2, 1, 0) == "ENXIO"
        assert err(dev.set_attr, 1, 9, 0) == "ENXIO"
        assert err(dev.get_attr, 1, 1, 0) == "EPERM"
    finally:
        os.close(ev)
    dev.close()
    assert err(vm.create_vfio_device) == "ok"                      # closing frees the slot


# -- ioeventfd / irqfd ---------------------------------------------------------------------------
def _ioeventfd(vm, **kw):
    from pyvfio.uapi import ffi

    return err(vm._ioctl, I.KVM_IOEVENTFD, ffi.new("struct kvm_ioeventfd *", kw))


def _irqfd(vm, **kw):
    from pyvfio.uapi import ffi

    return err(vm._ioctl, I.KVM_IRQFD, ffi.new("struct kvm_irqfd *", kw))


def test_ioeventfd_rules(vm):
    ev, ev2 = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert _ioeventfd(vm, addr=0x1000, len=3, fd=ev) == "EINVAL"
        assert _ioeventfd(vm, addr=0x1000, len=0, fd=ev, flags=I.KVM_IOEVENTFD_FLAG_DATAMATCH) == "EINVAL"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=ev, flags=0x40) == "EINVAL"
        assert _ioeventfd(vm, addr=(1 << 64) - 2, len=4, fd=ev) == "EINVAL"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=null) == "EINVAL"   # not an eventfd
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=987) == "EBADF"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=ev) == "ok"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=ev2) == "EEXIST"    # same addr/len
        assert _ioeventfd(vm, addr=0x1000, len=0, fd=ev2) == "EEXIST"    # wildcard length
        assert _ioeventfd(vm, addr=0x1000, len=2, fd=ev2) == "ok"        # other length
        pio, dm = I.KVM_IOEVENTFD_FLAG_PIO, I.KVM_IOEVENTFD_FLAG_DATAMATCH
        assert _ioeventfd(vm, addr=0x10, len=1, fd=ev, flags=pio | dm, datamatch=5) == "ok"
        assert _ioeventfd(vm, addr=0x10, len=1, fd=ev, flags=pio | dm, datamatch=6) == "ok"
        assert _ioeventfd(vm, addr=0x10, len=1, fd=ev, flags=pio) == "EEXIST"  # wildcard data
        deassign = I.KVM_IOEVENTFD_FLAG_DEASSIGN
        assert _ioeventfd(vm, addr=0x5000, len=4, fd=ev, flags=deassign) == "ENOENT"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=ev, flags=deassign) == "ok"
        assert _ioeventfd(vm, addr=0x1000, len=4, fd=ev, flags=deassign) == "ENOENT"
    finally:
        for fd in (ev, ev2, null):
            os.close(fd)


def test_irqfd_rules(kvm):
    ev, rs = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with kvm.create_vm() as vm:
            assert _irqfd(vm, fd=ev, gsi=5) == "EINVAL"                  # no in-kernel irqchip
            assert _irqfd(vm, fd=ev, gsi=5, flags=4) == "EINVAL"         # bad flags
            assert _irqfd(vm, fd=ev, gsi=5, flags=I.KVM_IRQFD_FLAG_DEASSIGN) == "ok"  # nothing to undo
            vm.create_irqchip()
            assert _irqfd(vm, fd=ev, gsi=5) == "ok"
            assert _irqfd(vm, fd=ev, gsi=5) == "EBUSY"
            assert _irqfd(vm, fd=ev, gsi=6) == "EBUSY"                   # one irqfd per eventfd
            assert _irqfd(vm, fd=null, gsi=7) == "EINVAL"
            assert _irqfd(vm, fd=987, gsi=7) == "EBADF"
            assert _irqfd(vm, fd=ev, gsi=5, flags=I.KVM_IRQFD_FLAG_DEASSIGN) == "ok"
            assert _irqfd(vm, fd=ev, gsi=5) == "ok"                      # free again
            assert _irqfd(vm, fd=rs, gsi=4, flags=I.KVM_IRQFD_FLAG_RESAMPLE, resamplefd=ev) == "ok"
    finally:
        for fd in (ev, rs, null):
            os.close(fd)


# -- guest_memfd / REGION2 ----------------------------------------------------------------------
def test_guest_memfd_rules(vm, mem):
    if not (vm.check_extension(I.KVM_CAP_GUEST_MEMFD) and vm.check_extension(I.KVM_CAP_USER_MEMORY2)):
        pytest.skip("no guest_memfd / KVM_SET_USER_MEMORY_REGION2 on this kernel")
    from pyvfio.uapi import ffi

    g = ffi.new("struct kvm_create_guest_memfd *", {"size": 1 << 20, "flags": 1 << 40})
    assert err(vm._ioctl, I.KVM_CREATE_GUEST_MEMFD, g) == "EINVAL"
    g.flags, g.size = 0, 1000
    assert err(vm._ioctl, I.KVM_CREATE_GUEST_MEMFD, g) == "EINVAL"
    gm = vm.create_guest_memfd(1 << 20)
    r2 = vm.set_user_memory_region2
    gfd = gm.fileno()
    assert err(r2, 1, GMEM | LOG, 0x100000, 0x10000, mem.addr, gfd, 0) == "EINVAL"   # no logging
    assert err(r2, 1, GMEM, 0x100000, 0x10000, mem.addr, gfd, 0x800) == "EINVAL"     # offset align
    assert err(r2, 1, GMEM, 0x100000, 0x10000, mem.addr, gfd, 1 << 20) == "EINVAL"   # beyond
    assert err(r2, 1, GMEM, 0x100000, 0x10000, mem.addr, 0, 0) == "EINVAL"           # not a gmem fd
    assert err(r2, 1, GMEM, 0x100000, 0x10000, mem.addr, gfd, 0) == "ok"
    assert err(r2, 1, GMEM, 0x200000, 0x10000, mem.addr, gfd, 0) == "EINVAL"         # immutable
    assert err(r2, 1, GMEM, 0x100000, 0, mem.addr, gfd, 0) == "ok"                   # delete
    assert err(r2, 2, 0, 0x300000, 0x10000, mem.addr) == "ok"                        # plain REGION2
