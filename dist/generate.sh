#!/usr/bin/env bash
# Regenerates uftpd.8 and the shell completions from the clap definitions
# (tests/manual.rs fails while the checked-in copies are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p uftpd
bin=target/debug/uftpd
"$bin" --generate-man dist
"$bin" --generate-completions bash > dist/completions/uftpd.bash
"$bin" --generate-completions zsh > dist/completions/_uftpd
"$bin" --generate-completions fish > dist/completions/uftpd.fish
echo "dist: regenerated uftpd.8 and completions"
