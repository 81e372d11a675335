#!/usr/bin/env python3
"""Print the fault campaign's figures (issue 21): per operation, its syscalls, the trials run
(every syscall failed in turn, once and from then on, with EIO, ENOMEM, EINVAL, EBUSY and
EINTR), how many ended in a typed error, how many the library absorbed, and the untyped errors
and leaks (both must be 0). The campaign itself is tests/reliability/campaign.py, the same one
tests/reliability/test_faults.py asserts on; it runs on the mock kernel only.

    tools/fault_campaign.py [--json] [OPERATION...]

Exit status 1 when any trial raised an untyped error or leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from reliability.campaign import OPERATIONS, campaign, summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    ap.add_argument("operations", nargs="*", help="only these operations (default: all)")
    args = ap.parse_args()
    known = {op.name: op for op in OPERATIONS}
    unknown = [n for n in args.operations if n not in known]
    if unknown:
        ap.error(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(known)}")
    ops = [known[n] for n in args.operations] if args.operations else list(OPERATIONS)
    t0 = time.perf_counter()
    figs = [campaign(op) for op in ops]
    seconds = time.perf_counter() - t0
    bad = [f for fig in figs for f in fig.findings if f.kind != "absorbed"]
    if args.json:
        print(json.dumps({"operations": [f.row() for f in figs], "seconds": round(seconds, 1),
                          "findings": [vars(f) for f in bad]}, indent=1))
    else:
        print(summary(figs))
        print(f"({seconds:.1f} s)")
        for f in bad:
            print(f"FINDING {f.kind}: call {f.n} ({f.call}) {f.errno} {f.mode}: {f.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
