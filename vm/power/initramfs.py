"""The POWER guest's initramfs: a cached base archive plus a small per-run payload archive.

The kernel unpacks concatenated newc cpio archives in order, so a run's initrd is
``base.cpio`` (userland, VFIO modules, /init; cached under a content hash) followed by
``payload.cpio`` (the project's files with host-compiled .pyc, the command to run; built per run).
Archives are written by vm/initramfs.py's CpioWriter (``newc``, mtime 0, root-owned) so the bytes
depend only on the inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from ..initramfs import CpioWriter
from . import pins
from .fetch import module_depends

BUILDER_VERSION = "2"
INIT_SCRIPT = Path(__file__).with_name("init.sh")
GUEST_SRC = "/src"                 # where the project's files appear in the guest
GUEST_RUN = "/run/pyvfio"          # cmd, env written per run

# ---------------------------------------------------------------------------------------------
# base archive
# ---------------------------------------------------------------------------------------------

def base_key(cache: Path) -> str:
    h = hashlib.sha256()
    h.update(BUILDER_VERSION.encode())
    h.update((cache / "READY").read_bytes())
    h.update(INIT_SCRIPT.read_bytes())
    return h.hexdigest()[:16]


def base_archive(cache: Path) -> Path:
    """The cached base archive for this pin set and /init script (built when missing)."""
    out = cache / f"base-{base_key(cache)}.cpio"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        w = CpioWriter(f)
        w.tree(cache / "root")
        for d in ("dev", "proc", "sys", "tmp", "run", "results", "root"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        # Modules where modprobe looks, a modules.dep for them, and /init's load order.
        moddir = f"usr/lib/modules/{pins.KERNEL.release}"
        order = (cache / "modules" / "order").read_text().split()
        by_modname = {n[:-3].replace("-", "_"): n for n in order}
        deps = []
        for name in order:
            data = (cache / "modules" / name).read_bytes()
            w.file(f"{moddir}/pyvfio/{name}", data)
            needs = [by_modname[d.replace("-", "_")] for d in module_depends(data)]
            deps.append(f"pyvfio/{name}:" + "".join(f" pyvfio/{d}" for d in needs))
        w.file(f"{moddir}/modules.dep", "\n".join(deps).encode() + b"\n")
        w.file(f"{moddir}/pyvfio.order", "".join(f"pyvfio/{n}\n" for n in order).encode())
        w.file("init", INIT_SCRIPT.read_bytes(), 0o755)
        w.trailer()
    for old in cache.glob("base-*.cpio"):
        old.unlink()
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# payload archive
# ---------------------------------------------------------------------------------------------

PAYLOAD_TOPS = ("pyvfio", "tests", "vm")
PAYLOAD_FILES = ("pyproject.toml", "conftest.py", "pytest.ini", "setup.cfg")


def project_files(repo: Path) -> list[str]:
    """Relative paths of the project's files the guest needs (tracked or new, not ignored)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z",
                              "--", *PAYLOAD_TOPS, *PAYLOAD_FILES],
                             check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for top in PAYLOAD_TOPS:
            for p in sorted((repo / top).rglob("*")):
                names.append(str(p.relative_to(repo)))
        names += [n for n in PAYLOAD_FILES if (repo / n).exists()]
    keep = []
    for n in sorted(set(names)):
        parts = n.split("/")
        if "__pycache__" in parts or n.endswith((".pyc", ".pyo")) or any(p.startswith(".") for p in parts):
            continue
        if (repo / n).is_file():
            keep.append(n)
    return keep


def compile_pyc(src: Path, guest_path: str, tmpdir: Path) -> bytes | None:
    """Unchecked-hash .pyc bytes of ``src`` as the guest's 3.11 imports it; None on a syntax error."""
    out = tmpdir / "x.pyc"
    try:
        py_compile.compile(str(src), cfile=str(out), dfile=guest_path, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return out.read_bytes()


def payload_archive(repo: Path, command: str, job: dict,
                    extra: Iterable[tuple[str, bytes]] = ()) -> bytes:
    """The per-run archive: project files under /src (+ __pycache__), /run/pyvfio/cmd (the
    command line) and /run/pyvfio/job.json (vm/agent.py's job description)."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for rel in project_files(repo):
            src = repo / rel
            mode = 0o755 if os.access(src, os.X_OK) else 0o644
            w.file(f"{GUEST_SRC}/{rel}", src.read_bytes(), mode)
            if rel.endswith(".py") and sys.implementation.cache_tag == "cpython-311":
                gpath = f"{GUEST_SRC}/{rel}"
                pyc = compile_pyc(src, gpath, tmp)
                if pyc is not None:
                    d, n = os.path.split(rel)
                    w.file(f"{GUEST_SRC}/{d}/__pycache__/{n[:-3]}.cpython-311.pyc".replace("//", "/"), pyc)
    w.file(f"{GUEST_RUN}/cmd", command.encode() + b"\n", 0o755)
    w.file(f"{GUEST_RUN}/job.json", json.dumps(job, indent=1).encode())
    for name, data in extra:
        w.file(name, data)
    w.trailer()
    return buf.getvalue()


def write_initrd(base: Path, payload: bytes, dest: Path) -> None:
    """``dest`` = base archive followed by the payload archive."""
    with open(base, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        out.write(payload)
