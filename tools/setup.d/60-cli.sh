#!/usr/bin/env bash
# CLI tests: lspci (pciutils) and dpdk-devbind.py (Debian's dpdk package: a 105 kB script package
# whose dependencies are pciutils, procps, pci.ids) to cross-check `pyvfio ls` in the guest;
# util-linux for setpriv/prlimit (doctor's staged RLIMIT_MEMLOCK problem); libudev1 for pyudev.
set -euo pipefail
. "$(dirname "$0")/../lib/apt.sh"
apt_install pciutils dpdk util-linux libudev1
