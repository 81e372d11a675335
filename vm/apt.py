"""A private apt configuration: Debian packages downloaded without touching the host's apt state.

:class:`PrivateApt` runs ``apt-get``/``apt-cache`` with its own sources list, lists and cache
directories, one architecture only, no host preferences and an empty dpkg status, and extracts
.debs with ``dpkg-deb -x``.  The guest kernels (vm/kernel.py), the kernel source for the iommufd
build (vm/build_kernel.py) and the POWER userland (vm/power/fetch.py) all come through it.

    >>> apt = PrivateApt("ppc64el", ("bookworm",), directory=Path("/tmp/apt"))
    >>> [deb] = apt.download({"busybox-static": "1:1.35.0-4+deb12u1+b1"}, Path("/tmp/debs"))
    >>> apt.extract(deb, Path("/tmp/root"))
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Callable, Mapping

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class AptError(RuntimeError):
    """A package could not be downloaded or extracted."""


def deb_glob(package: str, version: str) -> str:
    """The glob for the file apt-get download writes for package=version (any architecture)."""
    # apt's file names quote ':' in epochs as %3a and drop nothing else we use.
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


class PrivateApt:
    """apt-get with its own sources list, lists and cache for one architecture.

    ``directory`` holds sources.list, lists/ and cache/.  Failures raise ``error`` (a subclass of
    AptError chosen by the caller); ``pins`` names the file to update when a pin left the
    archive; ``log`` receives progress messages (None: silent).
    """

    def __init__(self, arch: str, suites: tuple[str, ...] = ("bookworm-backports",), *,
                 directory: Path, mirror: str = DEBIAN_MIRROR, keyring: str = DEBIAN_KEYRING,
                 error: type[AptError] = AptError, pins: str = "the pins",
                 log: Callable[[str], None] | None = None) -> None:
        self.arch = arch
        self.suites = suites
        self.dir = directory
        self.mirror = mirror
        self.keyring = keyring
        self.error = error
        self.pins = pins
        self._log = log

    def options(self) -> list[str]:
        """``-o`` options that make apt-get/apt-cache use only this configuration."""
        d = self.dir
        return [
            "-o", f"APT::Architecture={self.arch}",
            "-o", f"APT::Architectures={self.arch}",
            "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", "Dir::Etc::PreferencesParts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}",
            "-o", f"Dir::Cache={d / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", "Debug::NoLocking=1",
            "-o", "Acquire::Retries=3",
            "-o", "APT::Sandbox::User=root",
        ]

    # -- plumbing ------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def _prepare(self) -> None:
        """Directories and sources.list; lists made for other sources are dropped."""
        d = self.dir
        for sub in ("lists/partial", "cache/archives/partial"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        text = "".join(f"deb [signed-by={self.keyring}] {self.mirror} {s} main\n"
                       for s in self.suites)
        f = d / "sources.list"
        if not f.exists() or f.read_text() != text:
            f.write_text(text)
            for old in (d / "lists").glob("*_Packages*"):
                old.unlink()

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool, "-q", *self.options(), *args], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def has_lists(self) -> bool:
        return any((self.dir / "lists").glob("*_Packages*"))

    # -- apt -----------------------------------------------------------------------------------
    def update(self) -> None:
        self._prepare()
        self._say(f"apt-get update (private {self.arch} lists)")
        r = self._run("apt-get", "update")
        if r.returncode != 0:
            raise self.error(f"apt-get update ({self.arch}) failed:\n{r.stdout[-3000:]}")

    def versions(self, package: str) -> list[str]:
        """The versions apt offers for ``package``."""
        out = subprocess.run(["apt-cache", *self.options(), "madison", package],
                             capture_output=True, text=True).stdout
        return [ln.split("|")[1].strip() for ln in out.splitlines() if "|" in ln]

    def search(self, pattern: str) -> list[str]:
        """Package names matching the regular expression ``pattern``."""
        out = subprocess.run(["apt-cache", *self.options(), "search", "--names-only", pattern],
                             capture_output=True, text=True).stdout
        return [ln.split(" - ")[0] for ln in out.splitlines()]

    def download(self, packages: Mapping[str, str], dest: Path) -> list[Path]:
        """Download exact ``name=version`` .debs into ``dest`` (skipping those already there);
        return their paths in the order of ``packages``."""
        dest.mkdir(parents=True, exist_ok=True)

        def have(pkg: str, ver: str) -> Path | None:
            hits = sorted(dest.glob(deb_glob(pkg, ver)))
            return hits[0] if hits else None

        missing = [f"{p}={v}" for p, v in packages.items() if have(p, v) is None]
        if missing:
            self._prepare()
            if not self.has_lists():
                self.update()
            self._say(f"downloading {len(missing)} {self.arch} package(s)")
            r = self._run("apt-get", "download", *missing, cwd=dest)
            if r.returncode != 0:
                self.update()  # lists may be stale (point releases roll); try once more
                r = self._run("apt-get", "download", *missing, cwd=dest)
            if r.returncode != 0:
                raise self.error(
                    f"apt-get download {' '.join(missing)} failed; a pinned version may have "
                    f"left the archive: update {self.pins}.\n{self._offered(packages, dest)}"
                    f"{r.stdout[-3000:]}")
        out = []
        for p, v in packages.items():
            got = have(p, v)
            if got is None:
                raise self.error(f"{p}={v} was not downloaded into {dest}")
            out.append(got)
        return out

    def _offered(self, packages: Mapping[str, str], dest: Path) -> str:
        """What apt offers instead of the pinned versions it could not download."""
        lines = []
        for pkg, ver in packages.items():
            if any(dest.glob(deb_glob(pkg, ver))):
                continue
            offered = self.versions(pkg)
            if ver in offered:
                continue
            line = f"versions offered for {pkg}: {', '.join(offered) or 'none'}"
            if not offered:
                # linux-image-6.12.95+deb12-amd64 -> linux-image-
                family = re.sub(r"\d+\.\d+\.\d+.*", "", pkg)
                if family and family != pkg:
                    some = ", ".join(sorted(self.search("^" + re.escape(family)))[-8:]) or "none"
                    line += f"; some packages offered: {some}"
            lines.append(line + "\n")
        return "".join(lines)

    def extract(self, deb: Path, into: Path) -> None:
        """``dpkg-deb -x deb into``."""
        r = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise self.error(f"dpkg-deb -x {deb.name}: {r.stdout}")
