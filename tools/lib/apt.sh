# Sourced by tools/setup.d/*.sh: idempotent Debian package installation.
#   apt_install [-t SUITE] PKG...   installs what is missing (apt-get update at most once per run)
#   apt_backports                    adds bookworm-backports to the host's sources (idempotent)
#   apt_install_version SUITE VER PKG...  installs or upgrades PKGs to version VER from SUITE
export DEBIAN_FRONTEND=noninteractive
_APT="apt-get -o DPkg::Lock::Timeout=900 -o Acquire::Retries=3 -q"
_apt_updated=${_apt_updated:-}

apt_update_once() {
    if [ -z "$_apt_updated" ]; then
        local stamp=/var/lib/apt/periodic/pyvfio-update-stamp
        if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
            $_APT update >/dev/null
            mkdir -p "$(dirname "$stamp")" && touch "$stamp"
        fi
        _apt_updated=1
    fi
}

apt_backports() {
    local f=/etc/apt/sources.list.d/pyvfio-backports.list
    if [ ! -e "$f" ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > "$f"
        rm -f /var/lib/apt/periodic/pyvfio-update-stamp
        _apt_updated=
    fi
}

apt_install() {
    local suite=()
    if [ "${1:-}" = "-t" ]; then suite=(-t "$2"); shift 2; fi
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update_once
    echo "setup: apt-get install ${missing[*]}" >&2
    $_APT install -y --no-install-recommends "${suite[@]}" "${missing[@]}" >/dev/null
}

# The QEMU of the test bed (x86 and POWER move together: one qemu-system-data).
QEMU_VERSION=${QEMU_VERSION:-1:10.0.2+ds-2+deb13u1~bpo12+1}

apt_install_version() {
    local suite=$1 version=$2; shift 2
    local stale=()
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null)" = "$version" ] || stale+=("$p=$version")
    done
    [ ${#stale[@]} -eq 0 ] && return 0
    apt_update_once
    echo "setup: apt-get install -t $suite ${stale[*]}" >&2
    $_APT install -y --no-install-recommends -t "$suite" "${stale[@]}" >/dev/null
}
