#!/usr/bin/env python3
"""Benchmark: a dirty-log cycle (GET + CLEAR + scan) on a 16 GiB slot, pyvfio vs C, same run.

    python tools/bench_dirty_log.py [--gib 16] [--cycles 50] [--dirty 16] [--rounds 3]

One memslot over an anonymous MAP_NORESERVE mapping (only touched pages exist), manual dirty
log protect. Before each cycle (untimed) a real-mode vCPU stores to ``--dirty`` pages. The
timed cycle: KVM_GET_DIRTY_LOG into a bitmap, KVM_CLEAR_DIRTY_LOG of what it reported, and the
scan that lists the dirty page numbers -- MemSlot.fetch_dirty() + DirtyBitmap.pages() for
pyvfio, the same ioctls + a ctz loop in C (tools/c/kvm_dirty_log.c). Goal: pyvfio/C <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "c"))

import cbuild  # noqa: E402

from pyvfio.kvm import GuestMemory, Kvm, guestcode  # noqa: E402
from pyvfio.core.bitmap import DirtyBitmap  # noqa: E402

PAGE = 4096


def py_round(gib: int, cycles: int, ndirty: int) -> dict[str, float]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.enable_manual_dirty_log_protect()
        mem = GuestMemory.anonymous(gib << 30, noreserve=True)
        slot = vm.add_memslot(mem, 0, log_dirty=True)
        gpas = [0x10000 + j * PAGE * 3 + 0x10 for j in range(ndirty)]
        mem.write(0x1000, guestcode.write_pages(gpas))
        expect = [g // PAGE for g in gpas]
        vcpu = vm.create_vcpu()
        bm = DirtyBitmap.zeros(slot.npages, base=slot.gpa)
        managed, raw = [], []
        get, clear, sid, npages, addr = vm.get_dirty_log, vm.clear_dirty_log, slot.slot, slot.npages, bm.address
        for c in range(-1, 2 * cycles):
            vcpu.setup_real_mode(0x1000)
            vcpu.run_until_halt()
            if c % 2 == 0:
                t0 = time.perf_counter_ns()
                slot.fetch_dirty(out=bm)
                pages = bm.pages()
                t1 = time.perf_counter_ns()
                managed.append(t1 - t0)
            else:
                t0 = time.perf_counter_ns()
                get(sid, addr)
                clear(sid, 0, npages, addr)
                pages = bm.pages()
                t1 = time.perf_counter_ns()
                if c >= 0:
                    raw.append(t1 - t0)
            assert pages.tolist() == expect, (pages[:20], expect)
        vcpu.close()
        slot.delete()
        mem.close()
    return {"managed_ns": min(managed), "managed_median_ns": statistics.median(managed),
            "raw_ns": min(raw), "raw_median_ns": statistics.median(raw)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--gib", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--dirty", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    exe = cbuild.build("kvm_dirty_log")
    c_best, c_med, py = [], [], []
    for _ in range(args.rounds):
        r = cbuild.run(exe, args.gib, args.cycles, args.dirty)
        assert r["found"] == args.dirty, r
        c_best.append(r["cycle_ns"])
        c_med.append(r["median_ns"])
        py.append(py_round(args.gib, args.cycles, args.dirty))
    c = min(c_best)
    cm = statistics.median(c_med)
    rows = []
    ok = True
    for label, key in (("GET+CLEAR+scan (managed fetch_dirty)", "managed"), ("GET+CLEAR+scan (raw ioctls)", "raw")):
        best = min(p[f"{key}_ns"] for p in py)
        med = statistics.median(p[f"{key}_median_ns"] for p in py)
        ratio = best / c
        if key == "managed":
            ok &= ratio <= 1.2
        rows.append((label, f"{c / 1e3:.1f}", f"{best / 1e3:.1f}", f"{ratio:.2f}",
                     f"{cm / 1e3:.1f} / {med / 1e3:.1f}", "<= 1.2" + (" ok" if ratio <= 1.2 else " MISSED")))
    npages = (args.gib << 30) // PAGE
    print(f"Dirty-log cycle on a {args.gib} GiB slot ({npages} pages, {npages // 8 // 1024} KiB bitmap), "
          f"{args.dirty} pages dirtied per cycle, best of {args.rounds} x {args.cycles} cycles")
    print(cbuild.table(rows, ("cycle", "C us", "pyvfio us", "pyvfio/C", "median C / pyvfio us", "goal")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
