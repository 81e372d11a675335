"""Mock iommufd: /dev/iommu and the VFIO device cdevs /dev/vfio/devices/vfioN (6.12 rules).

Follows drivers/iommu/iommufd/{main.c,ioas.c,io_pagetable.c,pages.c,device.c,hw_pagetable.c}
and drivers/vfio/device_cdev.c. What user space can tell, with the kernel's errnos:

* Command framing (iommufd_fops_ioctl): ``size`` (the first u32) below the command's minimum →
  EINVAL; bytes past the struct the kernel knows must be zero (E2BIG); the answer is copied back
  over ``min(size, sizeof)``. Reserved fields or unknown flags → EOPNOTSUPP.
* Objects live in one id table per open /dev/iommu (ids from 1). IOMMU_DESTROY: unknown id →
  ENOENT; an object still used (an IOAS under a HWPT, a HWPT with a device attached, a bound
  device) → EBUSY.
* IOAS: a fresh IOAS spans [0, 2^64-1] with alignment 1. Attaching a device narrows it: the
  device's reserved regions (the MSI window) and everything outside the IOMMU aperture become
  reserved (EADDRINUSE if a mapping or an allowed range is there), the alignment becomes the
  IOMMU's smallest page. IOVA_RANGES lists the holes (EMSGSIZE, with ``num_iovas`` set, when the
  array is too small). ALLOW_IOVAS: start >= last or overlapping ranges → EINVAL; intersecting a
  reserved range → EADDRINUSE. MAP: no READABLE/WRITEABLE → EINVAL; length 0 or unaligned →
  EINVAL; FIXED_IOVA unaligned or reserved → EINVAL, overlap → EEXIST; otherwise the kernel picks
  the IOVA (iopt_alloc_iova: first fit above page 0, aligned like the user address up to 2 MiB
  with THP or one page without, inside the allowed ranges if any; ENOSPC when none). UNMAP: iova 0 + length 2^64-1 unmaps all;
  a range cutting a mapping → ENOENT (mappings before it are already gone), nothing inside →
  ENOENT, length 0 → EINVAL; ``length`` is rewritten to the bytes unmapped. COPY maps the pages
  behind a contiguous source range (ENOENT if not fully mapped; EPERM for WRITEABLE over memory
  mapped read-only).
* Pinning and accounting (pages.c): pages are pinned only while the IOAS has a domain (a HWPT),
  at MAP time or when the first domain arrives. Every pin adds to the mm's ``pinned_vm`` (VmPin).
  Without CAP_IPC_LOCK it is also charged to the user's locked_vm (RLIMIT_MODE 0, the default for
  /dev/iommu) or to the mm's locked_vm (RLIMIT_MODE 1, VmLck, what type1 uses), ENOMEM over
  RLIMIT_MEMLOCK. RLIMIT_MODE can be set only with CAP_SYS_RESOURCE (EPERM) and only while the
  context holds no object (EBUSY). A user address that is not mapped gives EFAULT when pinned.
* OPTION HUGE_PAGES (per IOAS): SET 0 raises the alignment to PAGE_SIZE (EINVAL once a domain
  holds mappings), values other than 0/1 → EINVAL.
* GET_HW_INFO: the intel vIOMMU answers type INTEL_VTD with ``struct iommu_hw_info_vtd``; amd and
  virtio answer type NONE. DIRTY_TRACKING capability only where the IOMMU has it (QEMU's do not:
  ``IommufdState.dirty_tracking`` turns it on in the mock). HWPT_ALLOC with DIRTY_TRACKING on an
  IOMMU without it → EOPNOTSUPP; SET_DIRTY_TRACKING/GET_DIRTY_BITMAP on a HWPT allocated without
  it → EOPNOTSUPP.
* The cdev (device_cdev.c): every ioctl but BIND_IOMMUFD → EINVAL before the bind; BIND: bad
  argsz/flags/negative fd → EINVAL, the VFIO group file open → EBUSY (and opening the group while
  a cdev is bound → EBUSY), bound twice → EINVAL, fd not open → EBADF, not /dev/iommu → EBADFD,
  no interrupt remapping without iommufd's allow_unsafe_interrupts → EPERM. ATTACH_IOMMUFD_PT to
  an IOAS reuses or creates an automatic HWPT (destroyed again on detach) and returns its id;
  attaching again replaces. DETACH when not attached is a no-op.

Simulated devices behind a cdev DMA through the IOAS of the HWPT they are attached to: the cdev
hands the vfio-pci device file (:func:`pyvfio.mockkernel.pci.open_device_file`) its own DMA
object (``dma_read``/``dma_write``, the same contract as a VFIO group's), so no change to the
device model was needed. A refused access lands nowhere and logs a DMAR fault to dmesg.
"""

from __future__ import annotations

import errno
from typing import Any

from ..core import KernelError, MockFile, MockKernel
from ..vfio import state as vfio_state
from .cdev import VfioCdevFile
from .file import IommufdFile, _contexts
from .objects import IommufdState, NAME, state


# ---------------------------------------------------------------------------------------------
# routes and sysfs
# ---------------------------------------------------------------------------------------------


def sync_cdevs(kernel: MockKernel) -> dict[str, int]:
    """Give every vfio-pci bound device a cdev number and its sysfs ``vfio-dev/vfioN`` entry
    (what vfio_device_add does); call again after adding devices to the mock topology."""
    st = state(kernel)
    for name, entry in vfio_state(kernel).devices.items():
        if entry.driver != "vfio-pci" or name in st.cdev_index:
            continue
        n = len(st.cdev_index)
        st.cdev_index[name] = n
        kernel.host.add_vfio_cdev(name, n)
    return dict(st.cdev_index)


def _open_iommu(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    f = IommufdFile(kernel, "/dev/iommu")
    _contexts(kernel).add(f)
    return f


def _open_cdev(kernel: MockKernel, m: Any, flags: int) -> MockFile:
    n = int(m.group(1))
    st = state(kernel)
    name = next((b for b, i in st.cdev_index.items() if i == n), None)
    entry = vfio_state(kernel).devices.get(name) if name else None
    if entry is None or entry.driver != "vfio-pci" or entry.sim is None:
        raise KernelError(errno.ENOENT, f"/dev/vfio/devices/vfio{n}: no such device")
    return VfioCdevFile(kernel, f"/dev/vfio/devices/vfio{n}", entry)


def group_blocked(kernel: MockKernel, group: int) -> bool:
    """True while a device of ``group`` is bound through its cdev (the group cannot open)."""
    st = kernel.state.get(NAME)
    return bool(st and st.cdev_open.get(group))


def install(kernel: MockKernel) -> None:
    """Register /dev/iommu, /dev/vfio/devices/vfioN and iommufd's module parameter."""
    st = IommufdState(kernel)
    kernel.state[NAME] = st
    kernel.route(r"/dev/iommu", _open_iommu)
    kernel.route(r"/dev/vfio/devices/vfio(\d+)", _open_cdev)
    vfio_state(kernel).write_param("iommufd", "allow_unsafe_interrupts", "N")
    vfio_state(kernel).open_blockers.append(lambda group: group_blocked(kernel, group))
    sync_cdevs(kernel)


__all__ = ["IommufdState", "IommufdFile", "VfioCdevFile", "CdevDma", "state", "sync_cdevs",
           "group_blocked", "install"]

