#!/usr/bin/env bash
# KVM part: the C baselines of tools/bench_kvm_memslots.py, bench_dirty_log.py and
# bench_bitmap_ranges.py are compiled at benchmark time (gcc, libc headers, linux/kvm.h).
# The tests themselves need only /dev/kvm (checked by tests/conftest.py). Idempotent.
set -euo pipefail
. "$(dirname "$0")/../lib/apt.sh"
apt_install gcc libc6-dev linux-libc-dev
