"""Pinned inputs of the POWER (pseries) guest: the one place to change a version.

The userland is the smallest set of ppc64el packages that runs python3 + pytest + pyvfio's runtime
dependencies (cffi, numpy, pyudev, click, hypothesis).  Their dependency closure was resolved once with
apt and is written out here, so a fetch never drags in postinst-only packages (dpkg, udev, ...).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from ..apt import DEBIAN_KEYRING, DEBIAN_MIRROR
from ..kernel import KERNELS, cache_root as _project_cache

SUITE_URL: Final = DEBIAN_MIRROR
# bookworm-security is left out on purpose: its ppc64el lists were caught mid-sync once.
SUITES: Final = ("bookworm", "bookworm-updates", "bookworm-backports")
KEYRING: Final = DEBIAN_KEYRING
ARCH: Final = "ppc64el"
TRIPLET: Final = "powerpc64le-linux-gnu"

KERNEL: Final = KERNELS["ppc64el"]  # linux-image-6.12.*+deb12-powerpc64le (the 6.1 kernel cannot
#                                    bind vfio-pci in a pseries guest: probe error -22)

# Modules the guest loads, in dependency order (checked against modinfo at fetch time).
KERNEL_MODULES: Final = (
    "kernel/drivers/vfio/vfio.ko",
    "kernel/drivers/vfio/vfio_iommu_spapr_tce.ko",
    "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "kernel/drivers/vfio/pci/vfio-pci.ko",
)

# name -> exact version (bookworm / bookworm-updates, ppc64el or all)
USERLAND: Final[dict[str, str]] = {
    "busybox-static": "1:1.35.0-4+deb12u1+b1",
    "libc6": "2.36-9+deb12u14",
    "libgcc-s1": "12.2.0-14+deb12u1",
    "libgfortran5": "12.2.0-14+deb12u1",
    "libblas3": "3.11.0-2",
    "liblapack3": "3.11.0-2",
    "libexpat1": "2.5.0-1+deb12u2",
    "zlib1g": "1:1.2.13.dfsg-1",
    "libbz2-1.0": "1.0.8-5+b1",
    "liblzma5": "5.4.1-1+deb12u1",
    "libssl3": "3.0.20-1~deb12u2",
    "libffi8": "3.4.4-1",
    "libuuid1": "2.38.1-5+deb12u3",
    "libcrypt1": "1:4.4.33-2",
    "libudev1": "252.39-1~deb12u2",
    "libpython3.11-minimal": "3.11.2-6+deb12u8",
    "python3.11-minimal": "3.11.2-6+deb12u8",
    "libpython3.11-stdlib": "3.11.2-6+deb12u8",
    "python3-minimal": "3.11.2-1+b1",
    "python3-cffi": "1.15.1-5",
    "python3-cffi-backend": "1.15.1-5+b1",
    "python3-pycparser": "2.21-1",
    "python3-ply": "3.11-5",
    "python3-numpy": "1:1.24.2-1+deb12u1",
    "python3-pkg-resources": "66.1.1-1+deb12u2",
    "python3-pyudev": "0.24.0-1",
    "python3-click": "8.1.3-2",
    "python3-colorama": "0.4.6-2",
    "python3-pytest": "7.2.1-2",
    "python3-attr": "22.2.0-1",
    "python3-iniconfig": "1.1.1-2",
    "python3-packaging": "23.0-1",
    "python3-pluggy": "1.0.0+repack-1",
    "python3-py": "1.11.0-1",
    "python3-more-itertools": "8.10.0-2",
    "python3-hypothesis": "6.67.1-1",
    "python3-sortedcontainers": "2.4.0-2",
    "python3-dateutil": "2.8.2-2",
    "python3-six": "1.16.0-4",
}

# Symlinks that maintainer scripts (update-alternatives, usrmerge) would have made.
EXTRA_SYMLINKS: Final[dict[str, str]] = {
    f"usr/lib/{TRIPLET}/libblas.so.3": "blas/libblas.so.3",
    f"usr/lib/{TRIPLET}/liblapack.so.3": "lapack/liblapack.so.3",
}

# Paths dropped from the extracted userland (documentation, tools the guest never runs).
PRUNE: Final = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/locale",
    "usr/share/initramfs-tools", "usr/share/bug", "usr/share/python3", "usr/share/gcc",
    "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter", "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/config-3.11-" + TRIPLET, "usr/include", f"usr/lib/{TRIPLET}/gconv",
    # numpy's second copy of its random/*.so for Cython users; the importable one is in python3/
    "usr/lib/python3.11/dist-packages",
)
PRUNE_DIRNAMES: Final = ("tests",)  # numpy/*/tests and the like, only under dist-packages

QEMU: Final = "qemu-system-ppc64"
MACHINE: Final = ("pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,"
                  "cap-ccf-assist=off")
EDU_DEVICE: Final = "edu,dma_mask=0xffffffffffffffff"


def pins_digest() -> str:
    """A short digest of everything above that changes what is fetched."""
    h = hashlib.sha256()
    h.update(repr((SUITES, ARCH, KERNEL, KERNEL_MODULES,
                   sorted(USERLAND.items()), sorted(EXTRA_SYMLINKS.items()), PRUNE,
                   PRUNE_DIRNAMES)).encode())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    """``<vm.kernel.cache_root()>/power`` (~/.cache/pyvfio/power); never inside the git tree."""
    return _project_cache() / "power"


def cache_dir() -> Path:
    """The folder for this set of pins: ``<cache_root>/<kernel abi>-<pins digest>``."""
    return cache_root() / f"{KERNEL.release}-{pins_digest()}"
