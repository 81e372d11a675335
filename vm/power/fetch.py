"""Fetch and prepare the POWER guest's kernel and userland into the cache (idempotent).

``prepare()`` leaves in :func:`vm.power.pins.cache_dir`:

- ``modules/*.ko``     the VFIO modules, decompressed, in load order (``modules/order``),
- ``root/``            the extracted userland: merged /usr, pruned, stdlib and dist-packages
                       precompiled to unchecked-hash .pyc by this host's Python 3.11,
- ``READY``            written last; its presence means everything above is complete.

The kernel itself is fetched and cached by vm/kernel.py (``fetch_kernel("ppc64el")``).  The .debs
come from a private apt configuration (vm/apt.py: its own sources, lists, cache;
APT::Architectures is ppc64el only) so the host's apt state is never touched.  Nothing is printed when the cache is
already complete.
"""

from __future__ import annotations

import compileall
import fcntl
import lzma
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import kernel
from ..apt import AptError, PrivateApt
from . import pins


class FetchError(AptError):
    """The guest's kernel or userland could not be fetched or prepared."""


def _log(msg: str) -> None:
    print(f"vm.power: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# private apt (vm/apt.py) and extraction
# ---------------------------------------------------------------------------------------------

def apt_dir() -> Path:
    return pins.cache_root() / "apt"


def private_apt() -> PrivateApt:
    """The private ppc64el apt configuration of the userland: ``<cache>/power/apt``."""
    return PrivateApt(pins.ARCH, pins.SUITES, directory=apt_dir(), mirror=pins.SUITE_URL,
                      keyring=pins.KEYRING, error=FetchError, pins="vm/power/pins.py", log=_log)


def download(packages: dict[str, str], dest: Path) -> list[Path]:
    """Download exact ``name=version`` .debs into ``dest`` (skips those already there)."""
    return private_apt().download(packages, dest)


def _merge_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst`` (merged-/usr), then remove ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
        else:
            if target.is_symlink() or target.exists():
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            entry.rename(target)
    src.rmdir()


def build_root(debs: list[Path], root: Path) -> None:
    """Extract ``debs`` into ``root`` as a merged-/usr tree, pruned, with .pyc precompiled."""
    apt = private_apt()
    for deb in debs:
        apt.extract(deb, root)
    for top in ("bin", "sbin", "lib", "lib64"):
        p = root / top
        if p.is_dir() and not p.is_symlink():
            _merge_into(p, root / "usr" / top)
        (root / top).symlink_to(f"usr/{top}")
    for rel in pins.PRUNE:
        p = root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    dist = root / "usr/lib/python3/dist-packages"
    for name in pins.PRUNE_DIRNAMES:
        for p in sorted(dist.rglob(name), reverse=True):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
    for rel, target in pins.EXTRA_SYMLINKS.items():
        link = root / rel
        if not (link.parent / target).exists():
            raise FetchError(f"symlink target {link.parent / target} missing")
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    precompile(root, [root / "usr/lib/python3.11", dist])


def precompile(root: Path, dirs: list[Path]) -> None:
    """Compile every .py below ``dirs`` to unchecked-hash .pyc named as the guest will see it.

    The guest runs CPython 3.11 like this host, so the bytecode (magic 3495) is the same; unchecked
    hash pycs are used without comparing source mtimes, which the cpio archive would not keep exact.
    """
    if sys.implementation.cache_tag != "cpython-311":
        _log(f"not precompiling the guest's .pyc: this host runs {sys.implementation.cache_tag}, "
             "the guest CPython 3.11 (it will compile at import, slower)")
        return
    import py_compile

    for d in dirs:
        compileall.compile_dir(
            str(d), quiet=2, stripdir=str(root), prependdir="/", workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def module_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a module's .modinfo strings."""
    key = b"\0depends="
    i = ko.find(key)
    if i < 0:
        return []
    end = ko.index(b"\0", i + len(key))
    value = ko[i + len(key):end].decode()
    return [d for d in value.split(",") if d]


def prepare_modules(moddir: Path, out: Path) -> None:
    """Decompress the VFIO modules into ``out`` and write their load order (checked against each
    module's ``depends=``) to ``out/order``."""
    out.mkdir()
    loaded: set[str] = set()
    order = []
    for rel in pins.KERNEL_MODULES:
        src = moddir / (rel + ".xz")
        data = lzma.decompress(src.read_bytes()) if src.exists() else (moddir / rel).read_bytes()
        name = Path(rel).name
        for dep in module_depends(data):
            if dep.replace("-", "_") not in loaded:
                raise FetchError(f"{name} depends on {dep}, which pins.KERNEL_MODULES does not "
                                 "load before it")
        (out / name).write_bytes(data)
        loaded.add(name[:-3].replace("-", "_"))
        order.append(name)
    (out / "order").write_text("".join(n + "\n" for n in order))


def vmlinux() -> Path:
    """The pinned ppc64el kernel image (fetched by vm.kernel when missing)."""
    return kernel.fetch_kernel("ppc64el").image


@contextmanager
def _locked() -> Iterator[None]:
    pins.cache_root().mkdir(parents=True, exist_ok=True)
    with open(pins.cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def is_ready() -> bool:
    return (pins.cache_dir() / "READY").exists()


def prepare(force: bool = False) -> Path:
    """Make :func:`pins.cache_dir` complete; returns it.  Quiet when there is nothing to do."""
    out = pins.cache_dir()
    if is_ready() and not force:
        return out
    with _locked():
        if is_ready() and not force:
            return out
        k = kernel.fetch_kernel("ppc64el")
        debs = download(pins.USERLAND, pins.cache_root() / "debs")
        _log(f"preparing {out}")
        if out.exists():
            shutil.rmtree(out)
        work = out.with_name(out.name + ".tmp")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        prepare_modules(k.modules_dir, work / "modules")
        build_root(debs, work / "root")
        # READY's bytes key the cached initramfs (vm/power/initramfs.base_key): new on every prepare.
        (work / "READY").write_text(f"{pins.pins_digest()} {time.time_ns()}\n")
        work.rename(out)
        # Older pin sets are dead weight: keep only this one (and the shared debs/apt folders).
        for other in pins.cache_root().iterdir():
            if other.is_dir() and "powerpc64le" in other.name and other != out:
                shutil.rmtree(other, ignore_errors=True)
        return out
