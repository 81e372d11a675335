#!/usr/bin/env python3
"""Benchmark: 4 KiB VFIO_IOMMU_MAP_DMA + UNMAP_DMA pairs, pyvfio against the same loop in C.

Runs where VFIO is real (the QEMU guest): ``python -m vm run --iommu intel -- .venv/bin/python
tools/bench_map_unmap.py``. The C baseline is written out and compiled with the system's gcc at
benchmark time (the guest uses the host's /usr/bin/gcc through the shared root), then both loops
run alternately, ``--rounds`` times each, on the same group, buffer size and IOVA; the report
takes each side's median. ``--backend mock`` runs the Python side alone on the mock kernel (no
ratio: the mock is not a kernel).

Measured: the C loop; pyvfio's two loops below; the same ioctls from Python with nothing of
pyvfio in the loop ("bare": struct + fcntl.ioctl, what any Python caller pays); and a "floor"
of two trivial ioctls per iteration. pyvfio loops:
* ``raw``: ``Type1Iommu.map_dma`` / ``unmap_dma`` (one ioctl each, what the C loop does);
* ``checked``: ``Type1Iommu.map`` / ``DmaMapping.unmap`` (argument checks, handles, buffer
  bookkeeping, short-unmap check);
* the ratio reported against the goal (pyvfio/C <= 1.2) is the raw one.

Output: a table on stdout, or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

C_SOURCE = r"""
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s GROUP ITER IOVA ROUNDS\n", argv[0]); return 2; }
    char path[64];
    snprintf(path, sizeof path, "/dev/vfio/%s", argv[1]);
    long iters = atol(argv[2]);
    uint64_t iova = strtoull(argv[3], NULL, 0);
    int rounds = atoi(argv[4]);
    int c = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    int g = open(path, O_RDWR | O_CLOEXEC);
    if (c < 0 || g < 0) { perror("open"); return 1; }
    if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c)) { perror("SET_CONTAINER"); return 1; }
    if (ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { perror("SET_IOMMU"); return 1; }
    void *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    struct vfio_iommu_type1_dma_map map;
    struct vfio_iommu_type1_dma_unmap unmap;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (long i = 0; i < iters; i++) {
            memset(&map, 0, sizeof map);
            map.argsz = sizeof map;
            map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
            map.vaddr = (uintptr_t)buf;
            map.iova = iova;
            map.size = 4096;
            if (ioctl(c, VFIO_IOMMU_MAP_DMA, &map)) { perror("MAP_DMA"); return 1; }
            memset(&unmap, 0, sizeof unmap);
            unmap.argsz = sizeof unmap;
            unmap.iova = iova;
            unmap.size = 4096;
            if (ioctl(c, VFIO_IOMMU_UNMAP_DMA, &unmap)) { perror("UNMAP_DMA"); return 1; }
            if (unmap.size != 4096) { fprintf(stderr, "short unmap\n"); return 1; }
        }
        double dt = now() - t0;
        printf("%.1f\n", dt / iters * 1e9);
        fflush(stdout);
    }
    return 0;
}
"""


def compile_c(workdir: str) -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("bench: no C compiler (gcc) found: apt-get install gcc")
    src = os.path.join(workdir, "bench_map_unmap.c")
    exe = os.path.join(workdir, "bench_map_unmap")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, src], check=True)
    return exe


def run_c(exe: str, group: int, iters: int, iova: int) -> float:
    out = subprocess.run([exe, str(group), str(iters), hex(iova), "1"], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def run_py(backend, bdf: str, iters: int, iova: int, checked: bool | str) -> float:
    from pyvfio.services.dma import DmaBuffer
    from pyvfio.vfio import Container, Group

    with Container(backend=backend) as c:
        c.attach(Group.from_bdf(bdf, backend=backend))
        iommu = c.set_iommu("TYPE1v2")
        with DmaBuffer(4096, hugepages=None) as buf:
            iommu.info()  # cached for map()'s checks, as in any real use
            if checked == "bare":
                # the same two ioctls with nothing of pyvfio in the loop: struct + fcntl.ioctl
                import fcntl
                import struct

                from pyvfio import ioctls

                fd, io = c.fileno(), fcntl.ioctl
                mreq, ureq = int(ioctls.VFIO_IOMMU_MAP_DMA), int(ioctls.VFIO_IOMMU_UNMAP_DMA)
                mpack, upack = struct.Struct("=IIQQQ").pack, struct.Struct("=IIQQ").pack
                vaddr, t0 = buf.addr, time.perf_counter()
                for _ in range(iters):
                    io(fd, mreq, mpack(32, 3, vaddr, iova, 4096))
                    ub = bytearray(upack(24, 0, iova, 4096))
                    io(fd, ureq, ub, True)
            elif checked:
                map_, t0 = iommu.map, time.perf_counter()
                for _ in range(iters):
                    map_(buf, iova).unmap()
            else:
                vaddr = buf.addr
                map_dma, unmap_dma, t0 = iommu.map_dma, iommu.unmap_dma, time.perf_counter()
                for _ in range(iters):
                    map_dma(vaddr, iova, 4096)
                    if unmap_dma(iova, 4096) != 4096:
                        raise RuntimeError("short unmap")
            dt = time.perf_counter() - t0
    return dt / iters * 1e9


def run_floor(iters: int) -> float:
    """The same loop shape with two trivial ioctls (FIONREAD on a pipe) per iteration and no
    pyvfio: what any Python caller pays on this CPU before the kernel's VFIO work."""
    import fcntl
    import struct
    import termios

    r, w = os.pipe()
    try:
        buf, pk, io, req = bytearray(8), struct.Struct("=Q").pack_into, fcntl.ioctl, termios.FIONREAD
        t0 = time.perf_counter()
        for _ in range(iters):
            pk(buf, 0, 0)
            io(r, req, buf, True)
            pk(buf, 0, 0)
            io(r, req, buf, True)
        dt = time.perf_counter() - t0
    finally:
        os.close(r)
        os.close(w)
    return dt / iters * 1e9


def find_bdf(backend) -> str:
    from pyvfio.demo import find_edu

    bdf = find_edu(backend)
    if bdf is None:
        raise SystemExit("bench: no edu device bound to vfio-pci (pass --bdf)")
    return bdf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("real", "mock"), default="real")
    p.add_argument("--bdf")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iova", type=lambda s: int(s, 0), default=0x100000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from pyvfio.seam import get_backend
    from pyvfio.vfio import Group

    backend = get_backend(args.backend)
    bdf = args.bdf or find_bdf(backend)
    group = Group.number_of(bdf, backend=backend)
    res: dict[str, object] = {"bdf": bdf, "group": group, "iterations": args.iterations,
                              "rounds": args.rounds, "backend": args.backend}
    raw: list[float] = []
    chk: list[float] = []
    cns: list[float] = []
    floor: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pyvfio-bench-") as tmp:
        exe = compile_c(tmp) if args.backend == "real" else None
        # warm-up (first touches, page tables, caches), not reported
        run_py(backend, bdf, max(args.iterations // 10, 10), args.iova, False)
        if exe:
            run_c(exe, group, max(args.iterations // 10, 10), args.iova)
        for _ in range(args.rounds):  # alternate so drift hits both sides alike
            raw.append(run_py(backend, bdf, args.iterations, args.iova, False))
            chk.append(run_py(backend, bdf, args.iterations, args.iova, True))
            floor.append(run_floor(args.iterations))
            if args.backend == "real":
                bare.append(run_py(backend, bdf, args.iterations, args.iova, "bare"))
            if exe:
                cns.append(run_c(exe, group, args.iterations, args.iova))
    res["pyvfio_raw_ns"] = raw
    res["pyvfio_checked_ns"] = chk
    res["c_ns"] = cns
    res["python_floor_ns"] = floor
    res["python_bare_ns"] = bare
    med = statistics.median
    res["pyvfio_raw_median_ns"] = med(raw)
    res["pyvfio_checked_median_ns"] = med(chk)
    if cns:
        res["c_median_ns"] = med(cns)
        ratio_raw = med(raw) / med(cns)
        res["ratio_raw"] = ratio_raw
        res["ratio_checked"] = med(chk) / med(cns)
        res["goal"] = 1.2
        res["goal_met"] = ratio_raw <= 1.2
        res["ratio_pyvfio_over_bare_python"] = med(raw) / med(bare)
        res["ratio_raw_min"] = min(raw) / min(cns)
        res["python_floor_median_ns"] = med(floor)
        res["python_bare_median_ns"] = med(bare)
        res["ratio_bare"] = med(bare) / med(cns)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"4 KiB MAP_DMA+UNMAP_DMA pairs on {bdf} (group {group}), {args.iterations} x {args.rounds} rounds")
        print(f"  pyvfio raw     (map_dma/unmap_dma): {med(raw):10.0f} ns/pair  {['%.0f' % x for x in raw]}")
        print(f"  pyvfio checked (map/unmap handles): {med(chk):10.0f} ns/pair  {['%.0f' % x for x in chk]}")
        if cns:
            print(f"  C (gcc -O2, same loop):             {med(cns):10.0f} ns/pair  {['%.0f' % x for x in cns]}")
            print(f"  Python bare (struct + fcntl.ioctl, no pyvfio):   {med(bare):10.0f} ns/pair  {['%.0f' % x for x in bare]}")
            print(f"  Python floor (2 trivial ioctls/iter, no pyvfio): {med(floor):10.0f} ns/pair")
            print(f"  ratio pyvfio raw / bare Python: {res['ratio_pyvfio_over_bare_python']:.3f}")
            print(f"  ratio pyvfio/C: raw {res['ratio_raw']:.3f} (of minima {res['ratio_raw_min']:.3f}), "
                  f"checked {res['ratio_checked']:.3f} (goal raw <= 1.2: "
                  f"{'met' if res['goal_met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
