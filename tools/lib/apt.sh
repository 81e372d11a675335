# Sourced by tools/setup.d/*.sh: idempotent Debian package installation.
#   apt_install [-t SUITE] PKG...   installs what is missing (apt-get update at most once per run)
#   apt_backports                    adds bookworm-backports to the host's sources (idempotent)
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
