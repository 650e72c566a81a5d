#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and checks what it holds: the binary, the man
# page, the completions, both units and the maintainer scripts. With
# --install it also installs it on this machine, checks the tftp user and
# uftpd --version, and purges it again (run as root, on a test machine).
# Not part of .ci/run: installing cargo-deb takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "build-deb: cargo install cargo-deb --locked first"; exit 2; }
deb=$(cargo deb 2>/dev/null | tail -1)
[[ -f $deb ]] || { echo "build-deb: cargo deb made no package"; exit 1; }
contents=$(dpkg-deb -c "$deb")
for path in ./usr/sbin/uftpd ./usr/share/man/man8/uftpd.8.gz \
    ./usr/lib/systemd/system/uftpd.service ./usr/lib/systemd/system/uftpd.socket \
    ./usr/share/bash-completion/completions/uftpd; do
    grep -q " $path\$" <<<"$contents" || { echo "build-deb: $deb lacks $path"; exit 1; }
done
grep -q ' ./usr/lib/uftpd-uring/in.tftpd -> ../../sbin/uftpd$' <<<"$contents" \
    || { echo "build-deb: $deb lacks the in.tftpd symlink"; exit 1; }
dpkg-deb -I "$deb" postinst >/dev/null
echo "build-deb: $deb ($(du -h "$deb" | cut -f1)) holds the binary, man page, completions and units"
if [[ ${1:-} == --install ]]; then
    dpkg -i "$deb"
    /usr/sbin/uftpd --version
    /usr/lib/uftpd-uring/in.tftpd -V | grep -q '^uftpd ' \
        || { echo "build-deb: in.tftpd -V is not uftpd's"; exit 1; }
    getent passwd tftp >/dev/null || { echo "build-deb: no tftp user after install"; exit 1; }
    dpkg --purge uftpd-uring
    echo "build-deb: installed, checked and purged"
fi
