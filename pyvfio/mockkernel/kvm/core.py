"""Shared pieces of the mock KVM: configuration, per-kernel state, argument and fd helpers.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


from ... import ioctls as I
from ...uapi import ffi, lib
from ..core import KernelError, MockFile, MockKernel
from ..pci.vfio_pci import VfioPciDeviceFile
from ..vfio.group import MockGroup

if TYPE_CHECKING:
    from .vm import VmFile


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
    """A VFIO group or device file of the mock VFIO (kvm_vfio_file_is_valid); a MockFile with a
    true ``vfio_file`` attribute also counts."""
    return bool(getattr(f, "vfio_file", False)) or isinstance(f, (MockGroup, VfioPciDeviceFile))


MAP_FAILED = (1 << 64) - 1


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
        p = lib.mmap(ffi.NULL, length, prot, flags, self.fd, offset)
        addr = int(ffi.cast("uintptr_t", p))
        if addr == MAP_FAILED:
            raise KernelError(ffi.errno, f"mmap of {self.size} bytes of kernel pages failed")
        return addr

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a cffi view still alive: leave it to the GC
            pass
        os.close(self.fd)


