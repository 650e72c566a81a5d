#!/usr/bin/env bash
# Install the real peers the tests use:
#   tftp-hpa (tftp), atftp, busybox (busybox tftp), curl (tftp://) for
#   tests/real_clients.rs and tests/faults.rs; chromium-headless-shell (the
#   status page in a real browser) and promtool (check metrics) for
#   tests/stats.rs; tftpd-hpa (extracted, not installed) for
#   tools/uftpd-load/tests/load.rs; man-db (man -l dist/uftpd.8) for
#   tests/manual.rs; systemd (systemd-socket-activate, systemd-analyze) for
#   tests/activation.rs; iproute2 (ip, for the network namespace of the
#   dual-stack test in tests/activation.rs). promtool is taken out of the prometheus package with
#   dpkg -x: installing the package would start a Prometheus server.
# Idempotent: packages already installed are skipped; when nothing is
# missing, apt is not touched at all. Debian/Ubuntu, run as root (or sudo).
set -euo pipefail

PACKAGES=(tftp-hpa atftp busybox curl chromium-headless-shell man-db systemd iproute2)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" == "install ok installed" ]]; then
        echo "install-clients: $pkg already installed"
    else
        missing+=("$pkg")
    fi
done

need_promtool=0
command -v promtool >/dev/null || need_promtool=1
# tftpd-hpa, as a peer for uftpd-load's tests and bench/compare.sh: taken
# out of its package with dpkg -x (installing it would start a service on
# port 69, and it conflicts with atftpd).
HPA_DIR=/opt/uftpd-peers/tftpd-hpa
need_hpa=0
[[ -x $HPA_DIR/usr/sbin/in.tftpd ]] || need_hpa=1

if [[ ${#missing[@]} -eq 0 && $need_promtool -eq 0 && $need_hpa -eq 0 ]]; then
    echo "install-clients: all test peers present"
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-clients: installing ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [[ $need_promtool -eq 1 ]]; then
    echo "install-clients: extracting promtool from the prometheus package"
    work=$(mktemp -d)
    # Optional: tests/stats.rs checks the metrics without it, less strictly.
    if (cd "$work" && apt-get download -q prometheus && dpkg -x prometheus_*.deb root); then
        "${SUDO[@]}" install -m 0755 "$work/root/usr/bin/promtool" /usr/local/bin/promtool
    else
        echo "install-clients: promtool unavailable; /metrics is checked without it"
    fi
    rm -rf "$work"
fi

if [[ $need_hpa -eq 1 ]]; then
    echo "install-clients: extracting tftpd-hpa into $HPA_DIR"
    work=$(mktemp -d)
    (cd "$work" && apt-get download -q tftpd-hpa)
    "${SUDO[@]}" mkdir -p "$HPA_DIR"
    "${SUDO[@]}" dpkg -x "$work"/tftpd-hpa_*.deb "$HPA_DIR"
    rm -rf "$work"
fi

for bin in tftp atftp busybox curl chromium-headless-shell man systemd-socket-activate systemd-analyze; do
    command -v "$bin" >/dev/null || { echo "install-clients: $bin still missing" >&2; exit 1; }
done
echo "install-clients: done"
