"""Compile the C baselines of tools/bench_*.py at benchmark time (gcc -O2, into a temp dir)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_OUT = tempfile.mkdtemp(prefix="pyvfio-bench-c-")


def build(name: str) -> str:
    """Compile tools/c/NAME.c and return the executable's path (SystemExit if no compiler)."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        sys.exit("bench: no C compiler (gcc) found: run tools/dev setup (tools/setup.d/50-kvm.sh)")
    exe = os.path.join(_OUT, name)
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, os.path.join(HERE, name + ".c")], check=True)
    return exe


def run(exe: str, *args: object) -> dict[str, float]:
    """Run a baseline; it prints "key value" lines."""
    out = subprocess.run([exe, *map(str, args)], check=True, capture_output=True, text=True).stdout
    res: dict[str, float] = {}
    for line in out.splitlines():
        k, v = line.split()
        res[k] = float(v)
    return res


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain-text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)
