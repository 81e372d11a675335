"""Guest kernels: pinned Debian kernel packages, fetched with a private apt configuration and cached.

The pins below are the one place where guest kernel versions live.  A kernel is fetched as a
.deb through a private apt configuration (vm/apt.py: its own sources list, lists and cache
directories, so the host's apt state is never touched), extracted with ``dpkg-deb -x`` into
``<cache>/kernels/<arch>-<release>/`` and indexed with ``depmod -b``.  It is never installed on
the host.  Backports point releases roll and old pool files disappear: when a pin stops being
downloadable, ``fetch_kernel`` fails with a message naming the versions apt does offer.

Usable for any Debian architecture (the POWER guest uses ``fetch_kernel("ppc64el")``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .apt import AptError, PrivateApt

# --- the pins (one place) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelPin:
    """A Debian kernel image package pinned by exact version."""

    arch: str  # Debian architecture: amd64, ppc64el
    release: str  # `uname -r` of the kernel, e.g. 6.12.95+deb12-amd64
    version: str  # Debian package version
    suite: str = "bookworm-backports"

    @property
    def package(self) -> str:
        return f"linux-image-{self.release}"


KERNELS: dict[str, KernelPin] = {
    "amd64": KernelPin("amd64", "6.12.95+deb12-amd64", "6.12.95-1~bpo12+1"),
    "ppc64el": KernelPin("ppc64el", "6.12.95+deb12-powerpc64le", "6.12.95-1~bpo12+1"),
}

#: Debian's kernel source package used for the iommufd kernel build (vm/build_kernel.py).
LINUX_SOURCE = ("linux-source-6.12", "6.12.95-1~bpo12+1")

class KernelFetchError(AptError):
    """A pinned package could not be downloaded or extracted."""


def cache_root() -> Path:
    """Where pyvfio keeps downloaded and built artefacts (outside git).

    ``$PYVFIO_CACHE``, else ``$XDG_CACHE_HOME/pyvfio``, else ``~/.cache/pyvfio``.
    """
    if os.environ.get("PYVFIO_CACHE"):
        return Path(os.environ["PYVFIO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyvfio"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An extracted guest kernel: the image to boot and the module tree that goes with it."""

    arch: str
    release: str
    root: Path  # extracted package tree
    image: Path  # vmlinuz / vmlinux
    modules_dir: Path  # <root>/lib/modules/<release>
    config: Path | None  # the kernel's .config, if shipped

    def config_value(self, option: str) -> str | None:
        """Value of CONFIG_<option> ('y', 'm', a string) or None when unset."""
        if self.config is None or not self.config.exists():
            return None
        key = option if option.startswith("CONFIG_") else "CONFIG_" + option
        for line in self.config.read_text().splitlines():
            if line.startswith(key + "="):
                return line.split("=", 1)[1]
        return None


def kernel_dir(arch: str, release: str) -> Path:
    return cache_root() / "kernels" / f"{arch}-{release}"


def _find_image(root: Path, release: str) -> Path | None:
    for name in (f"vmlinuz-{release}", f"vmlinux-{release}"):
        p = root / "boot" / name
        if p.exists():
            return p
    return None


def cached_kernel(arch: str = "amd64", release: str | None = None) -> Kernel | None:
    """The cached kernel for (arch, release), or None when it has not been fetched yet."""
    if release is None:
        release = KERNELS[arch].release
    root = kernel_dir(arch, release)
    if not (root / ".complete").exists():
        return None
    image = _find_image(root, release)
    if image is None:
        return None
    cfg = root / "boot" / f"config-{release}"
    return Kernel(arch, release, root, image, root / "lib" / "modules" / release,
                  cfg if cfg.exists() else None)


def private_apt(arch: str, suites: tuple[str, ...] = ("bookworm-backports",)) -> PrivateApt:
    """The private apt configuration for kernels and kernel sources: ``<cache>/apt/<arch>``."""
    return PrivateApt(arch, suites, directory=cache_root() / "apt" / arch, error=KernelFetchError,
                      pins="the pin in vm/kernel.py")


def fetch_kernel(arch: str = "amd64", pin: KernelPin | None = None, *, quiet: bool = True) -> Kernel:
    """Return the cached kernel for arch, downloading and extracting the pinned .deb if needed."""
    pin = pin or KERNELS[arch]
    have = cached_kernel(pin.arch, pin.release)
    if have is not None:
        return have
    root = kernel_dir(pin.arch, pin.release)
    if not quiet:
        print(f"fetching guest kernel {pin.package}={pin.version} ({pin.arch})", file=sys.stderr)
    apt = private_apt(pin.arch, (pin.suite,))
    with tempfile.TemporaryDirectory(prefix="pyvfio-kernel-", dir=cache_root()
                                     if cache_root().exists() else None) as tmp:
        [deb] = apt.download({pin.package: pin.version}, Path(tmp))
        staging = Path(tmp) / "tree"
        apt.extract(deb, staging)
        moddir = staging / "lib" / "modules" / pin.release
        if moddir.exists():
            r = subprocess.run(["depmod", "-b", str(staging), pin.release], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise KernelFetchError(f"depmod -b {staging} failed ({r.returncode}): "
                                       f"{r.stderr.strip()}")
        (staging / ".pin").write_text(f"{pin.package}={pin.version}\n")
        (staging / ".complete").write_text("")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(root))
    k = cached_kernel(pin.arch, pin.release)
    if k is None:
        raise KernelFetchError(f"{pin.package}: no kernel image found after extraction in {root}")
    return k
