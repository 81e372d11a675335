"""/dev/kvm: the KVM system file (capabilities, KVM_CREATE_VM).
"""

from __future__ import annotations

import errno
from typing import Any


from ... import ioctls as I
from ..core import KernelError, MockFile, handles
from .core import KvmState, state
from .vm import VmFile


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


