"""The iommufd scenarios of tests/scenarios/iommufd.py against the real kernel: inside QEMU
guests booted with pyvfio's iommufd kernel (vm/build_kernel.py: linux-source-6.12 with IOMMUFD
and VFIO_DEVICE_CDEV), under the intel, amd and virtio vIOMMUs, edu bound to vfio-pci by the
test bed's agent.

The very same scenario functions run on the mock in tests/test_iommufd_mock.py: both must give
the same outcomes (errnos, kernel-chosen IOVAs, DMA bytes, pinned and locked memory).
"""

from __future__ import annotations

import pytest
from scenarios import Env
from scenarios import iommufd as sc

pytestmark = pytest.mark.guest(iommufd=True, variants=["intel", "amd", "virtio"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    from pyvfio.seam import get_backend

    edu = [d for d in guest_info["devices"] if d.get("name") == "edu" and d.get("bound")]
    if not edu:
        pytest.fail(f"the guest agent did not bind edu to vfio-pci: {guest_info['devices']}", pytrace=False)
    if not guest_info.get("iommufd"):
        pytest.fail(f"no /dev/iommu in the {guest_variant} guest: not the iommufd kernel?", pytrace=False)
    return Env("real", lambda: get_backend("real"), bdf=edu[0]["bdf"],
               facts={"variant": guest_variant, "guest": guest_info})


@pytest.mark.parametrize("scenario", sc.ALL, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)

