"""Smoke tests that run INSIDE the POWER (pseries, ppc64le) guest: the per-arch request encoding
is the POWER one and the real kernel accepts it.

Marked ``power_guest``: on the host, vm/pytest_plugin.py replaces each with a twin that reports the
outcome of the same test run in one POWER guest boot (a test the guest did not report fails).
"""

from __future__ import annotations

import errno
import os
import platform

import pytest

pytestmark = pytest.mark.power_guest


@pytest.fixture
def vfio_fd():
    from pyvfio.seam.real import RealBackend

    backend = RealBackend()
    fd = backend.open("/dev/vfio/vfio")
    yield backend, fd
    backend.close(fd)


def test_guest_is_ppc64le_and_pyvfio_encodes_for_it():
    from pyvfio import ioctls

    assert platform.machine() == "ppc64le"
    assert ioctls.ARCH == "ppc64le"
    assert ioctls.VFIO_GET_API_VERSION == 0x20003B64
    assert ioctls.VFIO_CHECK_EXTENSION == 0x20003B65


def test_get_api_version_on_the_real_kernel(vfio_fd):
    from pyvfio import ioctls

    backend, fd = vfio_fd
    got = backend.ioctl(fd, ioctls.VFIO_GET_API_VERSION)
    assert got == ioctls.VFIO_API_VERSION == 0


def test_the_x86_encoding_is_refused_here(vfio_fd):
    """The generic _IOC number (0x3b64) is not GET_API_VERSION to a powerpc kernel.

    The container's ioctl handler sends requests it does not know to the IOMMU driver; with none
    set yet it answers EINVAL (drivers/vfio/container.c), not ENOTTY and not the version 0.
    """
    from pyvfio import ioctls
    from pyvfio.errors import PyvfioError

    backend, fd = vfio_fd
    x86 = ioctls.for_arch("x86_64").VFIO_GET_API_VERSION
    assert x86 == 0x3B64
    with pytest.raises(PyvfioError) as e:
        backend.ioctl(fd, x86, op="VFIO_GET_API_VERSION(x86 number)")
    assert e.value.errno == errno.EINVAL


def test_fcntl_ioctl_agrees(vfio_fd):
    """The stdlib path gives the same answer with the same number (no pyvfio seam involved)."""
    import fcntl

    from pyvfio import ioctls

    _, fd = vfio_fd
    assert fcntl.ioctl(fd, ioctls.VFIO_GET_API_VERSION) == 0


def test_spapr_iommus_supported_type1_not(vfio_fd):
    from pyvfio import ioctls

    backend, fd = vfio_fd

    def check(ext: int) -> int:
        return backend.ioctl(fd, ioctls.VFIO_CHECK_EXTENSION, ext)

    assert check(ioctls.VFIO_SPAPR_TCE_IOMMU) == 1
    assert check(ioctls.VFIO_SPAPR_TCE_v2_IOMMU) == 1
    assert check(ioctls.VFIO_TYPE1v2_IOMMU) == 0


def test_edu_is_bound_to_vfio_pci(guest_info):
    edu = [d for d in guest_info["devices"] if d["name"] == "edu"]
    assert len(edu) == 1 and edu[0]["bound"], guest_info
    assert os.path.exists(f"/dev/vfio/{edu[0]['iommu_group']}")
    assert os.path.basename(os.readlink(f"/sys/bus/pci/devices/{edu[0]['bdf']}/driver")) == "vfio-pci"
