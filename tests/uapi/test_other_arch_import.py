"""Every pyvfio module imports on the other architectures pyvfio encodes for.

On ppc64le and aarch64 the x86-only requests (KVM_GET_REGS...) do not exist, and the POWER guest
imports the whole package (the mock kernel included) before running its tests there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["pyvfio", "pyvfio.mockkernel", "pyvfio.testing", "pyvfio.cli", "pyvfio.demo"]


@pytest.mark.parametrize("arch", ["ppc64le", "aarch64"])
def test_package_imports_under(arch):
    code = (f"import platform; platform.machine = lambda: {arch!r}\n"
            f"import importlib\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            f"from pyvfio import ioctls\n"
            f"assert ioctls.ARCH == {arch!r}, ioctls.ARCH\n"
            f"assert not hasattr(ioctls, 'KVM_GET_REGS')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
