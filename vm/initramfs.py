"""The guest's initramfs: static busybox, vm/init.sh as /init, and the few modules needed to mount
the host root (virtio-9p, overlay, virtio-iommu), decompressed so busybox insmod can load them.

Cached under ``<cache>/initramfs/<kernel release>-<hash>.cpio.gz``, the hash covering the init
script, the module list and the busybox binary, so any change rebuilds it (about 1 s).

:class:`CpioWriter` writes the archive in Python (``newc``, mtime 0, root-owned, parents before
children), so the bytes depend only on the inputs; the POWER guest's initramfs
(vm/power/initramfs.py) is written by the same class.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO

from .kernel import Kernel, cache_root

#: Modules loaded by /init, in this order (dependencies are added before each).
INITRAMFS_MODULES = ("virtio_iommu", "9pnet_virtio", "9p", "overlay")

INIT_SCRIPT = Path(__file__).with_name("init.sh")
BUILDER_VERSION = "2"  # part of the cache key: bump when the archive layout changes
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class CpioWriter:
    """Writes a newc ("070701") cpio archive; parents are emitted before their children."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._dirs: set[str] = {""}
        self._links: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        name = name.strip("/")
        if name:
            self._parents(name)
        bname = name.encode() + b"\0" if name else b".\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0)
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + bname
        self._out.write(hdr + b"\0" * (-len(hdr) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self._links:
                # The kernel would replace the symlink with a directory (merged /usr breaks).
                raise ValueError(f"{name}: parent {d} is a symlink in this archive; use its target")
            if d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, S_IFDIR | 0o755, nlink=2)

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name not in self._dirs:
            self._dirs.add(name)
            self._entry(name, S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())
        self._links.add(name.strip("/"))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, S_IFCHR | mode, rdev=(major, minor))

    def tree(self, root: Path, prefix: str = "") -> None:
        """Every directory, regular file and symlink below ``root`` (sorted, modes kept)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = prefix.strip("/") if rel == "." else f"{prefix.strip('/')}/{rel}".strip("/")
            if base:
                self.dir(base, os.stat(dirpath).st_mode & 0o7777)
            for n in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                p = os.path.join(dirpath, n)
                name = f"{base}/{n}" if base else n
                st = os.lstat(p)
                if os.path.islink(p):
                    self.symlink(name, os.readlink(p))
                elif os.path.isfile(p):
                    with open(p, "rb") as f:
                        self.file(name, f.read(), st.st_mode & 0o7777)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        pad = -self._out.tell() % 512 if hasattr(self._out, "tell") else 0
        self._out.write(b"\0" * pad)


class InitramfsError(RuntimeError):
    pass


def find_busybox() -> Path | None:
    """The static busybox (package busybox-static), or None."""
    for c in BUSYBOX_CANDIDATES:
        p = Path(c)
        if p.exists():
            out = subprocess.run(["file", "-L", str(p)], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically linked"
            if "dynamically linked" not in out:
                return p
    return None


def _module_index(kernel: Kernel) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(module name -> relative path, relative path -> dependency paths) from modules.dep."""
    names: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    dep_file = kernel.modules_dir / "modules.dep"
    for line in dep_file.read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = os.path.basename(path).split(".ko")[0]
        names[base] = path
        names[base.replace("-", "_")] = path
    return names, deps


def module_load_order(kernel: Kernel, wanted: tuple[str, ...] = INITRAMFS_MODULES) -> list[str]:
    """Relative module paths for `wanted` (built-in ones skipped), dependencies first.

    A kernel without a module tree (the iommufd build: CONFIG_MODULES=n) needs none.
    """
    if not (kernel.modules_dir / "modules.dep").exists():
        return []
    names, deps = _module_index(kernel)
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the full transitive closure; load the deepest first
        for d in reversed(deps.get(path, [])):
            add(d)
        order.append(path)

    builtin = (kernel.modules_dir / "modules.builtin").read_text() \
        if (kernel.modules_dir / "modules.builtin").exists() else ""
    for name in wanted:
        key = name.replace("-", "_")
        if key in names:
            add(names[key])
        elif f"/{name}.ko" not in builtin and f"/{key}.ko" not in builtin:
            raise InitramfsError(f"module {name} is neither in modules.dep nor built into {kernel.release}")
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def build_initramfs(kernel: Kernel, modules: tuple[str, ...] = INITRAMFS_MODULES,
                    init_script: Path = INIT_SCRIPT) -> Path:
    """Return the path of the (cached) initramfs for `kernel`."""
    busybox = find_busybox()
    if busybox is None:
        raise InitramfsError("static busybox not found: install busybox-static (tools/dev setup)")
    order = module_load_order(kernel, modules)
    h = hashlib.sha256()
    h.update(BUILDER_VERSION.encode())
    h.update(init_script.read_bytes())
    h.update("\n".join(order).encode())
    h.update(busybox.read_bytes())
    h.update(kernel.release.encode())
    out = cache_root() / "initramfs" / f"{kernel.release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "proc", "sys", "dev", "modules", "lower", "rw", "newroot"):
        w.dir(d)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    w.file("init", init_script.read_bytes(), 0o755)
    names = []
    for rel in order:
        name = os.path.basename(rel).split(".ko")[0] + ".ko"
        w.file(f"modules/{name}", _read_module(kernel.modules_dir / rel))
        names.append(name)
    w.file("modules.order", ("\n".join(names) + "\n").encode())
    w.trailer()
    # unique partial name: several runs may build the same image at once
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    partial.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    os.replace(partial, out)
    return out
