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
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .apt import AptError, PrivateApt

# --- the pins (one place) -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelPin:
    """A Debian kernel image package pinned by exact version (``extra``: packages that ship with it,
    such as sid's split ``linux-modules-<release>``)."""

    arch: str  # Debian architecture: amd64, ppc64el
    release: str  # `uname -r` of the kernel, e.g. 6.12.95+deb12-amd64
    version: str  # Debian package version
    suite: str = "bookworm-backports"
    extra: tuple[str, ...] = ()

    @property
    def package(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def packages(self) -> dict[str, str]:
        return {self.package: self.version, **{p: self.version for p in self.extra}}


@dataclasses.dataclass(frozen=True)
class KernelSeries:
    """A Debian kernel series followed at its newest build (sid replaces its packages within weeks
    and old pool files disappear, so the build is resolved at set-up time, then cached).

    ``resolve()`` asks the private apt lists for ``linux-image-<series>.N+debNN-<flavour>`` and
    returns the newest as a :class:`KernelPin`; the booted build is recorded in guest-info.json.
    """

    arch: str
    series: str  # e.g. "7.2"
    flavour: str  # Debian flavour: amd64
    suite: str = "sid"

    def pattern(self) -> str:
        return rf"^linux-image-{re.escape(self.series)}\.[0-9]+\+deb[0-9]+-{re.escape(self.flavour)}$"

    def release_glob(self) -> str:
        return f"{self.series}.*+deb*-{self.flavour}"

    def resolve(self) -> KernelPin:
        apt = private_apt(self.arch, (self.suite,))
        apt.update()
        names = [n for n in apt.search(self.pattern()) if re.match(self.pattern(), n)]
        if not names:
            raise KernelFetchError(f"{self.suite} offers no linux-image-{self.series}.*-{self.flavour}")
        name = max(names, key=lambda n: _version_key(n.removeprefix("linux-image-")))
        release = name.removeprefix("linux-image-")
        [version, *_] = apt.versions(name)
        # 7.x images are split: the image package is a shell over linux-base (config, System.map),
        # linux-binary (vmlinuz) and linux-modules; 6.x packages ship everything in one
        parts = {f"linux-{part}-{release}" for part in ("base", "binary", "modules")}
        extra = tuple(sorted(parts & set(apt.search(rf"^linux-[a-z]+-{re.escape(release)}$"))))
        return KernelPin(self.arch, release, version, self.suite, extra)


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release))


KERNELS: dict[str, KernelPin] = {
    "amd64": KernelPin("amd64", "6.12.95+deb12-amd64", "6.12.95-1~bpo12+1"),
    "ppc64el": KernelPin("ppc64el", "6.12.95+deb12-powerpc64le", "6.12.95-1~bpo12+1"),
}

#: The newest Debian kernel generation, followed by series (kernel (b) of the test bed's matrix).
NEWEST = KernelSeries("amd64", "7.2", "amd64")

#: Debian's kernel source for our own build (vm/build_kernel.py): the newest series, resolved
#: like NEWEST at set-up time; the build records which version it compiled.
LINUX_SOURCE_SERIES = ("linux-source-7.2", "sid")

#: The guest kernel generations (vm/guest.py, vm/pytest_plugin.py): Debian's stable-series
#: kernel (KERNELS["amd64"]), the newest Debian kernel (NEWEST) and our own build.
GENERATIONS = ("stable", "newest", "built")

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
    modules_dir: Path  # <root>/lib/modules/<release> (7.x: <root>/usr/lib/modules/<release>)
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


def _find_image(root: Path, release: str) -> tuple[Path, Path, Path] | None:
    """(image, config, module dir): 6.x packages use /boot and /lib/modules, 7.x packages keep
    vmlinuz and config in /usr/lib/modules/<release>/."""
    for name in (f"vmlinuz-{release}", f"vmlinux-{release}"):
        p = root / "boot" / name
        if p.exists():
            return p, root / "boot" / f"config-{release}", root / "lib" / "modules" / release
    moddir = root / "usr" / "lib" / "modules" / release
    for name in ("vmlinuz", "vmlinux"):
        if (moddir / name).exists():
            return moddir / name, moddir / "config", moddir
    return None


def cached_kernel(arch: str = "amd64", release: str | None = None) -> Kernel | None:
    """The cached kernel for (arch, release), or None when it has not been fetched yet."""
    if release is None:
        release = KERNELS[arch].release
    root = kernel_dir(arch, release)
    if not (root / ".complete").exists():
        return None
    found = _find_image(root, release)
    if found is None:
        return None
    image, cfg, moddir = found
    return Kernel(arch, release, root, image, moddir, cfg if cfg.exists() else None)


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
        debs = apt.download(pin.packages, Path(tmp))
        staging = Path(tmp) / "tree"
        for deb in debs:
            apt.extract(deb, staging)
        if (staging / "usr" / "lib" / "modules").is_dir() and not (staging / "lib").exists():
            (staging / "lib").symlink_to("usr/lib")  # depmod -b looks in <base>/lib/modules
        moddir = staging / "lib" / "modules" / pin.release
        if moddir.exists():
            r = subprocess.run(["depmod", "-b", str(staging), pin.release], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise KernelFetchError(f"depmod -b {staging} failed ({r.returncode}): "
                                       f"{r.stderr.strip()}")
        (staging / ".pin").write_text("".join(f"{p}={v}\n" for p, v in pin.packages.items()))
        (staging / ".complete").write_text("")
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(root))
    k = cached_kernel(pin.arch, pin.release)
    if k is None:
        raise KernelFetchError(f"{pin.package}: no kernel image found after extraction in {root}")
    return k


def cached_newest(series: KernelSeries = NEWEST) -> Kernel | None:
    """The newest cached build of ``series`` (no network), or None."""
    found = [k for d in (cache_root() / "kernels").glob(f"{series.arch}-{series.release_glob()}")
             if (k := cached_kernel(series.arch, d.name.removeprefix(series.arch + "-"))) is not None]
    return max(found, key=lambda k: _version_key(k.release), default=None)


def fetch_newest(series: KernelSeries = NEWEST, *, quiet: bool = True) -> Kernel:
    """Resolve the newest build of ``series`` (network), fetch it unless cached, return it."""
    try:
        pin = series.resolve()
    except KernelFetchError:
        have = cached_newest(series)
        if have is None:
            raise
        return have  # offline, or the suite mid-sync: the cached build stays in use
    return fetch_kernel(series.arch, pin, quiet=quiet)


def pin_of(kernel: Kernel) -> str:
    """The packages a fetched kernel came from (``name=version`` lines), or its release."""
    f = kernel.root / ".pin"
    return f.read_text().strip() if f.exists() else kernel.release
