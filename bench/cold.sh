#!/usr/bin/env bash
# A hot lock-step 4 MiB download (curl, blksize 1468), timed while a file
# evicted from the page cache (ROOT/cold.bin, 256 MiB) streams on the same
# shard (atftp, blksize 1468, windowsize 16):
#   bash bench/cold.sh BINARY PORT   (ROOT=/tmp/coldroot, made beforehand)
set -e
bin=$1; port=$2; root=/tmp/coldroot
$bin --listen 127.0.0.1:$port --cores 1 $root 2>/dev/null & sp=$!
sleep 0.4
for rep in 1 2 3; do
  python3 -c "
import os
fd=os.open('$root/cold.bin',os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)"
  atftp --option "blksize 1468" --option "windowsize 16" -g -r cold.bin -l /dev/null 127.0.0.1 $port >/dev/null 2>&1 & cp=$!
  sleep 0.05
  t0=$EPOCHREALTIME; curl -s --tftp-blksize 1468 tftp://127.0.0.1:$port/hot.bin -o /dev/null; t1=$EPOCHREALTIME
  wait $cp
  echo "$(basename $bin) rep $rep: hot 4 MiB lock-step during a cold 256 MiB stream: $(echo "$t1 - $t0" | bc) s"
done
kill $sp; wait $sp 2>/dev/null || true
