"""The iommufd scenarios of tests/scenarios/iommufd.py against the real kernel: inside QEMU
guests booted with pyvfio's iommufd kernel (vm/build_kernel.py: linux-source-6.12 with IOMMUFD
and VFIO_DEVICE_CDEV), under the intel, amd and virtio vIOMMUs, edu bound to vfio-pci by the
test bed's agent.

The very same scenario functions run on the mock in tests/test_iommufd_mock.py: both must give
the same outcomes (errnos, kernel-chosen IOVAs, DMA bytes, pinned and locked memory).
"""

from __future__ import annotations

import pytest
from scenarios import Env, guest_env
from scenarios import iommufd as sc

pytestmark = pytest.mark.guest(iommufd=True, variants=["intel", "amd", "virtio"])


@pytest.fixture
def env(guest_info, guest_variant) -> Env:
    return guest_env(guest_info, guest_variant, iommufd=True)


@pytest.mark.parametrize("scenario", sc.ALL, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, env, no_fd_leak):
    scenario(env)

