"""Guest kernels: pinned Debian kernel packages, fetched with a private apt configuration and cached.

The pins below are the one place where guest kernel versions live.  A kernel is fetched as a
.deb (``apt-get download`` with its own sources list, lists and cache directories, so the host's
apt state is never touched), extracted with ``dpkg-deb -x`` into
``<cache>/kernels/<arch>-<release>/`` and indexed with ``depmod -b``.  It is never installed on
the host.  Backports point releases roll and old pool files disappear: when a pin stops being
downloadable, ``fetch_kernel`` fails with a message naming the versions apt does offer.

Usable for any Debian architecture (the POWER guest uses ``fetch_kernel("ppc64el")``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class KernelFetchError(RuntimeError):
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


# --- private apt ----------------------------------------------------------------------------


class PrivateApt:
    """apt-get with its own sources list, lists and cache: the host's apt state is untouched."""

    def __init__(self, arch: str, suites: tuple[str, ...] = ("bookworm-backports",),
                 mirror: str = DEBIAN_MIRROR) -> None:
        self.arch = arch
        self.dir = cache_root() / "apt" / arch
        self.suites = suites
        self.mirror = mirror

    def _opts(self) -> list[str]:
        d = self.dir
        return [
            "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            "-o", f"Dir::State::Status={d / 'status'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            "-o", f"APT::Architectures={self.arch}",
            "-o", f"APT::Architecture={self.arch}",
            "-o", "Debug::NoLocking=1",
        ]

    def _prepare(self) -> None:
        d = self.dir
        for sub in ("lists/partial", "cache/archives/partial"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "status").touch()
        lines = [f"deb [signed-by={DEBIAN_KEYRING}] {self.mirror} {s} main" for s in self.suites]
        (d / "sources.list").write_text("\n".join(lines) + "\n")

    def update(self) -> None:
        self._prepare()
        _run(["apt-get", *self._opts(), "-qq", "update"])

    def versions(self, package: str) -> list[str]:
        out = subprocess.run(["apt-cache", *self._opts(), "madison", package],
                             capture_output=True, text=True).stdout
        return [ln.split("|")[1].strip() for ln in out.splitlines() if "|" in ln]

    def search(self, pattern: str) -> list[str]:
        out = subprocess.run(["apt-cache", *self._opts(), "search", "--names-only", pattern],
                             capture_output=True, text=True).stdout
        return [ln.split(" - ")[0] for ln in out.splitlines()]

    def download(self, package: str, version: str, dest: Path) -> Path:
        """Download package=version into dest (a directory); return the .deb path."""
        self._prepare()
        if not any((self.dir / "lists").glob("*Packages*")):
            self.update()
        dest.mkdir(parents=True, exist_ok=True)
        cmd = ["apt-get", *self._opts(), "-qq", "download", f"{package}={version}"]
        r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if r.returncode != 0:
            # lists may be stale: refresh once and retry
            self.update()
            r = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if r.returncode != 0:
            family = re.sub(r"\d+\.\d+\.\d+.*", "", package)  # linux-image-6.12.95+deb12-amd64 -> linux-image-
            offered = ", ".join(sorted(self.search("^" + re.escape(family)))[-8:]) or "none"
            raise KernelFetchError(
                f"apt-get download {package}={version} failed: {r.stderr.strip()}\n"
                f"versions offered for {package}: {', '.join(self.versions(package)) or 'none'}; "
                f"some packages offered: {offered}. Update the pin in vm/kernel.py.")
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise KernelFetchError(f"apt-get download produced no .deb for {package} in {dest}")
        return debs[-1]


def _run(cmd: list[str], **kw) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise KernelFetchError(f"{' '.join(cmd[:3])}... failed ({r.returncode}): {r.stderr.strip()}")


def fetch_kernel(arch: str = "amd64", pin: KernelPin | None = None, *, quiet: bool = True) -> Kernel:
    """Return the cached kernel for arch, downloading and extracting the pinned .deb if needed."""
    pin = pin or KERNELS[arch]
    have = cached_kernel(pin.arch, pin.release)
    if have is not None:
        return have
    root = kernel_dir(pin.arch, pin.release)
    if not quiet:
        print(f"fetching guest kernel {pin.package}={pin.version} ({pin.arch})", file=sys.stderr)
    apt = PrivateApt(pin.arch, (pin.suite,))
    with tempfile.TemporaryDirectory(prefix="pyvfio-kernel-", dir=cache_root()
                                     if cache_root().exists() else None) as tmp:
        deb = apt.download(pin.package, pin.version, Path(tmp))
        staging = Path(tmp) / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(staging)])
        moddir = staging / "lib" / "modules" / pin.release
        if moddir.exists():
            _run(["depmod", "-b", str(staging), pin.release])
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
