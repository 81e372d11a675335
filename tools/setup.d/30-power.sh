#!/usr/bin/env bash
# POWER (pseries) guest test bed (vm/power/): qemu-system-ppc 10.0 (bookworm-backports, installed
# with qemu-system-x86 by 20-testbed.sh), the pinned ppc64el
# kernel (vm/kernel.py KERNELS["ppc64el"]) and the guest userland .debs (vm/power/pins.py: busybox,
# python3.11, pytest, cffi, numpy, ...) fetched with a private ppc64el apt config and extracted,
# with .pyc precompiled, into ~/.cache/pyvfio/power/ (never installed on the host).
# Idempotent, quiet when already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tools/lib/apt.sh"
# dpkg-dev is not needed: dpkg-deb (dpkg) extracts; apt-get downloads.
cd "$ROOT"
PY=${PYTHON:-python3}
# The guest's .pyc are compiled by this Python: it must be 3.11 like the guest's.
"$PY" -m vm.power setup
