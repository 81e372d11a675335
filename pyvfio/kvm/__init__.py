"""KVM objects: the system fd, VMs, memslots, dirty logs, vCPUs, devices, ioeventfd/irqfd.

``Kvm`` (/dev/kvm) -> ``Vm`` -> ``MemSlot`` (over a ``GuestMemory``), ``Vcpu`` (+ ``DirtyRing``),
``KvmVfioDevice``, ``IoEventFd``, ``IrqFd``. Dirty logs come back as
:class:`pyvfio.core.bitmap.DirtyBitmap`.

Modules, each importing only those after it: ``system`` (Kvm) -> ``vm`` (Vm, GuestMemfd) ->
``memslot`` (MemSlot, MemFlag, slot checks), ``vcpu``, ``device``, ``eventfd`` -> ``memory``
(GuestMemory over :class:`pyvfio.core.memory.HostMemory`).
"""

from .device import KvmDevice, KvmVfioDevice
from .eventfd import IoEventFd, IrqFd
from .memory import GuestMemory
from .vcpu import DirtyRing, IoExit, Vcpu, VcpuExitError
from .memslot import MemFlag, MemSlot
from .system import Kvm
from .vm import GuestMemfd, Vm

__all__ = ["DirtyRing", "GuestMemfd", "GuestMemory", "IoEventFd", "IoExit", "IrqFd", "Kvm",
           "KvmDevice", "KvmVfioDevice", "MemFlag", "MemSlot", "Vcpu", "VcpuExitError", "Vm"]
