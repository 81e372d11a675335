#!/usr/bin/env bash
# QEMU guest test bed (vm/): QEMU 10.0 for x86 and POWER from bookworm-backports (one
# qemu-system-data; igb, a full 4096-byte edu DMA), static busybox, kmod, cpio, and the guest
# kernels fetched with a private apt config into ~/.cache/pyvfio/kernels/ (never installed on the
# host): the pinned stable one (vm/kernel.py KERNELS) and the newest build of the newest series
# (vm/kernel.py NEWEST, resolved here). Idempotent, quiet when already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tools/lib/apt.sh"
apt_backports
apt_install_version bookworm-backports "$QEMU_VERSION" qemu-system-x86 qemu-system-ppc \
    qemu-system-common qemu-system-data
apt_install -t bookworm-backports seabios
apt_install busybox-static kmod cpio xz-utils zstd
cd "$ROOT"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; from vm.kernel import cached_kernel; sys.exit(cached_kernel("amd64") is None)'; then
    "$PY" -m vm fetch-kernel --arch amd64 >/dev/null
fi
# the newest series moves: resolve its newest build at every set-up (a cached build stays in use
# when the archive cannot be reached)
"$PY" -m vm fetch-kernel --newest >/dev/null
# Our guest kernel (vm/build_kernel.py): about 12 min at -j2, so built only under CI (or
# when asked with PYVFIO_BUILD_IOMMUFD_KERNEL=1) and cached by its config fragment's hash.  A
# failed build does not stop setup: iommufd guest tests then fail (CI) or skip, naming the cause.
if ! "$PY" -c 'import sys; from vm.build_kernel import cached_iommufd_kernel; sys.exit(cached_iommufd_kernel() is None)'; then
    if [ "${CI:-}" = true ] || [ "${PYVFIO_BUILD_IOMMUFD_KERNEL:-}" = 1 ]; then
        apt_install gcc make flex bison bc libelf-dev libssl-dev
        "$PY" -m vm build-kernel >/dev/null || echo "setup: iommufd kernel build failed (see above)" >&2
    fi
fi
