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

from ..core import MockKernel
from .core import NAME, KvmConfig, KvmState, state
from .devices import GuestMemfdFile, KvmVfioDeviceFile
from .system import KvmSystemFile
from .vcpu import VcpuFile
from .vm import Slot, VmFile


def install(kernel: MockKernel) -> None:
    """Register /dev/kvm."""
    kernel.state[NAME] = KvmState()
    kernel.route(r"/dev/kvm", lambda k, m, flags: KvmSystemFile(k, "/dev/kvm"))
    kernel.host.write("dev/kvm", "")


__all__ = ["NAME", "KvmConfig", "KvmState", "install", "state", "KvmSystemFile", "VmFile", "Slot",
           "VcpuFile", "KvmVfioDeviceFile", "GuestMemfdFile"]
