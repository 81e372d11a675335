"""KVM objects: the system fd, VMs, memslots, dirty logs, vCPUs, devices, ioeventfd/irqfd.

``Kvm`` (/dev/kvm) -> ``Vm`` -> ``MemSlot`` (over a ``GuestMemory``), ``Vcpu`` (+ ``DirtyRing``),
``KvmVfioDevice``, ``IoEventFd``, ``IrqFd``. Dirty logs come back as
:class:`pyvfio.core.bitmap.DirtyBitmap`.
"""

from .device import KvmDevice, KvmVfioDevice
from .eventfd import IoEventFd, IrqFd
from .memory import GuestMemory
from .vcpu import DirtyRing, IoExit, Vcpu, VcpuExitError
from .vm import GuestMemfd, Kvm, MemFlag, MemSlot, Vm

__all__ = ["DirtyRing", "GuestMemfd", "GuestMemory", "IoEventFd", "IoExit", "IrqFd", "Kvm",
           "KvmDevice", "KvmVfioDevice", "MemFlag", "MemSlot", "Vcpu", "VcpuExitError", "Vm"]
