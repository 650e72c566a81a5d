#!/usr/bin/env python3
"""Amplification of TFTP servers to a peer that never answers (a spoofed
source): bytes sent back per byte of request, over the server's whole hold.

    python3 bench/amplify.py HOST:PORT NAME [--peers N] [--repeats R]
                             [--gap S] [--listen S] [--opts k=v,...]

N sockets on 127.0.0.1 each send an RRQ of NAME (R times, S seconds
apart) and never answer; every datagram the server sends to them within
--listen seconds is counted. Prints one JSON line: requests, request
bytes, reply datagrams and bytes, and the factor (reply bytes / request
bytes). Loopback only; bounded by --listen.
"""

import argparse
import json
import select
import socket
import time


def rrq(name, opts):
    b = b"\x00\x01" + name.encode() + b"\x00octet\x00"
    for k, v in opts:
        b += k.encode() + b"\x00" + v.encode() + b"\x00"
    return b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("name")
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--listen", type=float, default=20.0)
    ap.add_argument("--opts", default="")
    a = ap.parse_args()
    host, port = a.server.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost") and not host.startswith("127."):
        raise SystemExit("loopback targets only")
    server = (host, int(port))
    opts = [tuple(kv.split("=", 1)) for kv in a.opts.split(",") if kv]
    request = rrq(a.name, opts)
    socks = []
    for _ in range(a.peers):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    sent = 0
    replies = 0
    reply_bytes = 0
    start = time.monotonic()
    next_send = start
    repeats_done = 0
    end = start + a.listen
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if repeats_done < a.repeats and now >= next_send:
            for s in socks:
                s.sendto(request, server)
                sent += len(request)
            repeats_done += 1
            next_send = now + a.gap
        timeout = min(end, next_send if repeats_done < a.repeats else end) - now
        ready, _, _ = select.select(socks, [], [], max(0.0, timeout))
        for s in ready:
            while True:
                try:
                    data, _ = s.recvfrom(70000)
                except BlockingIOError:
                    break
                replies += 1
                reply_bytes += len(data)
    print(json.dumps({
        "requests": a.peers * repeats_done,
        "request_bytes": sent,
        "replies": replies,
        "reply_bytes": reply_bytes,
        "factor": round(reply_bytes / sent, 2) if sent else None,
    }))


if __name__ == "__main__":
    main()
