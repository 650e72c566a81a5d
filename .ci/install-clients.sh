#!/usr/bin/env bash
# Install the real TFTP clients used by tests/real_clients.rs:
#   tftp-hpa (tftp), atftp, busybox (busybox tftp), curl (tftp://).
# Idempotent: packages already installed are skipped; when nothing is
# missing, apt is not touched at all. Debian/Ubuntu, run as root (or sudo).
set -euo pipefail

PACKAGES=(tftp-hpa atftp busybox curl)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" == "install ok installed" ]]; then
        echo "install-clients: $pkg already installed"
    else
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-clients: all TFTP clients present"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-clients: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

for bin in tftp atftp busybox curl; do
    command -v "$bin" >/dev/null || { echo "install-clients: $bin still missing" >&2; exit 1; }
done
echo "install-clients: done"
