#!/usr/bin/env bash
# VFIO device layer: Debian's pciutils on the host root, which the x86 guest mounts over 9p, so
# the guest tests can compare pyvfio's config-space capability walk with `lspci -vv`.
# Idempotent, quiet when already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=/dev/null
. "$ROOT/tools/lib/apt.sh"
apt_install pciutils
