"""The guest's initramfs: static busybox, vm/init.sh as /init, and the few modules needed to mount
the host root (virtio-9p, overlay, virtio-iommu), decompressed so busybox insmod can load them.

Cached under ``<cache>/initramfs/<kernel release>-<hash>.cpio.gz``, the hash covering the init
script, the module list and the busybox binary, so any change rebuilds it (about 1 s).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .kernel import Kernel, cache_root

#: Modules loaded by /init, in this order (dependencies are added before each).
INITRAMFS_MODULES = ("virtio_iommu", "9pnet_virtio", "9p", "overlay")

INIT_SCRIPT = Path(__file__).with_name("init.sh")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


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
    if not shutil.which("cpio"):
        raise InitramfsError("cpio not found: install cpio (tools/dev setup)")
    order = module_load_order(kernel, modules)
    h = hashlib.sha256()
    h.update(init_script.read_bytes())
    h.update("\n".join(order).encode())
    h.update(busybox.read_bytes())
    h.update(kernel.release.encode())
    out = cache_root() / "initramfs" / f"{kernel.release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyvfio-initramfs-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "proc", "sys", "dev", "modules", "lower", "rw", "newroot"):
            (root / d).mkdir(parents=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        shutil.copy2(init_script, root / "init")
        os.chmod(root / "init", 0o755)
        names = []
        for rel in order:
            name = os.path.basename(rel).split(".ko")[0] + ".ko"
            (root / "modules" / name).write_bytes(_read_module(kernel.modules_dir / rel))
            names.append(name)
        (root / "modules.order").write_text("\n".join(names) + "\n")
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True,
                               check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                              input=files.encode(), capture_output=True, check=True).stdout
        # unique partial name: several engineers' runs may build the same image at once
        partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
        partial.write_bytes(gzip.compress(cpio, compresslevel=1))
        os.replace(partial, out)
    return out
