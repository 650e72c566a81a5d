#!/usr/bin/env python3
"""Writes the checked-in seed corpus, fuzz/corpus/<target>/seed-*.

    python3 fuzz/seeds.py

`wire` takes raw datagrams: real packets from RFC 1350, 2347, 2348, 2349
and 7440. The other targets take structured input decoded with the
`arbitrary` crate (1.5): integers little-endian, bool = low bit of a byte,
Option = bool then value, enum = u32 whose (x * variants) >> 32 is the
variant index, Vec = (1, element)* then 0, struct fields in order. This
script writes that format for hand-made scenarios (the RFC option lists,
whole transfers, the UEFI probe...); check a seed with
`cargo +nightly fuzz fmt <target> fuzz/corpus/<target>/<seed>`.
Fuzzer finds are not kept here: run.sh keeps them in fuzz/work/.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(x):
    return struct.pack("<B", x)


def u16(x):
    return struct.pack("<H", x)


def i16(x):
    return struct.pack("<h", x)


def u32(x):
    return struct.pack("<I", x)


def u64(x):
    return struct.pack("<Q", x)


def boolean(b):
    return b"\x01" if b else b"\x00"


def option(value, encode):
    return b"\x00" if value is None else b"\x01" + encode(value)


def vec(items, encode):
    return b"".join(b"\x01" + encode(i) for i in items) + b"\x00"


def bytes_vec(raw):
    return vec(raw, u8)


def variant(index, count):
    """The u32 that `arbitrary`'s derive maps to variant `index` of `count`."""
    return u32(-(-(index << 32) // count))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------- wire

WIRE = {
    "rrq-rfc1350": b"\x00\x01boot/pxelinux.0\x00octet\x00",
    "rrq-rfc2347-example": b"\x00\x01foobar\x00octet\x00blksize\x001432\x00tsize\x000\x00",
    "oack-rfc2347-example": b"\x00\x06blksize\x001432\x00tsize\x00131072\x00",
    "rrq-rfc2349-timeout": b"\x00\x01boot.img\x00octet\x00timeout\x001\x00tsize\x000\x00",
    "rrq-rfc7440-windowsize": b"\x00\x01bigfile\x00octet\x00windowsize\x0016\x00blksize\x001468\x00",
    "wrq-netascii-tsize": b"\x00\x02notes.txt\x00NetASCII\x00tsize\x004096\x00",
    "ack-1": b"\x00\x04\x00\x01",
    "ack-65535": b"\x00\x04\xff\xff",
    "data-1": b"\x00\x03\x00\x01" + b"hello, world\r\n",
    "data-empty-last": b"\x00\x03\x00\x02",
    "error-1": b"\x00\x05\x00\x01File not found\x00",
    "error-8-no-nul": b"\x00\x05\x00\x08User aborted the transfer",
    "rrq-mail-refused": b"\x00\x01f\x00mail\x00",
    "rrq-unterminated-option": b"\x00\x01file\x00octet\x00blksize\x001024",
}

# ---------------------------------------------------------------- negotiate

NAMES = ["blksize", "timeout", "tsize", "windowsize"]


def name(n, case_mask=0):
    if n in NAMES:
        return variant(NAMES.index(n), 5) + u16(case_mask)
    return variant(4, 5) + bytes_vec(n.encode())


def number(v):
    return variant(0, 4) + u64(v)


def padded(zeros, v):
    return variant(2, 4) + u8(zeros) + u32(v)


def text(t):
    return variant(3, 4) + bytes_vec(t.encode())


def negotiate(pairs, write=False, netascii=False, mode_case=0, filename=b"f",
              blksize_max=65464, windowsize_max=64, upload_max=1 << 30,
              read_size=1 << 20):
    return (boolean(write) + boolean(netascii) + u16(mode_case) + bytes_vec(filename)
            + vec(pairs, lambda p: p[0] + p[1])
            + u16(blksize_max) + u16(windowsize_max) + u64(upload_max)
            + option(read_size, u64))


NEGOTIATE = {
    "rfc2347-example": negotiate([(name("blksize"), number(1432)), (name("tsize"), number(0))],
                                 filename=b"foobar"),
    "rfc2349-timeout-tsize": negotiate([(name("timeout"), number(1)), (name("tsize"), number(0))]),
    "rfc7440-windowsize": negotiate([(name("windowsize"), number(16)),
                                     (name("blksize"), number(1468))]),
    "wrq-tsize-over-limit": negotiate([(name("tsize"), number(5 << 30))], write=True),
    "blksize-7-refused": negotiate([(name("blksize"), number(7))]),
    "mixed-case-duplicates-text": negotiate(
        [(name("blksize", 0b1010101), text("abc")), (name("BlkSize"), number(70000)),
         (name("blksize"), number(512)), (name("timeout"), number(0)),
         (name("timeout", 0xffff), padded(3, 5)), (name("msftwindow"), number(31416)),
         (name("windowsize"), number(65536)), (name("windowsize", 1), number(40000))],
        netascii=True, mode_case=0xff, windowsize_max=65535, read_size=None),
    "seventeen-options": negotiate([(name("x%d" % i), number(i)) for i in range(16)]
                                   + [(name("blksize"), number(1024))]),
}

# ------------------------------------------------------------------ session

STEPS = ["Ack", "AckAhead", "AckBack", "Data", "Error", "Raw", "Fire", "Wait",
         "DuplicateRequest", "Unreachable", "Commit", "CommitFail", "StoreFail", "Abort",
         "AckSent", "DataRun"]


def step(kind, *args):
    tag = variant(STEPS.index(kind), len(STEPS))
    if kind in ("Ack", "AckAhead", "AckBack", "Error", "Wait"):
        return tag + u16(args[0])
    if kind == "DataRun":
        return tag + u8(args[0])
    if kind == "Data":
        ahead, length = args
        return tag + i16(ahead) + length
    if kind == "Raw":
        return tag + bytes_vec(args[0])
    return tag


FULL = variant(0, 3)


def short(n):
    return variant(1, 3) + u16(n)


def over(n):
    return variant(2, 3) + u8(n)


def size_bytes(n):
    return variant(0, 2) + u16(n)


def size_blocks(blocks, rem):
    return variant(1, 2) + u32(blocks) + u16(rem)


def session(steps, write=False, netascii=False, blksize=None, windowsize=None, timeout=None,
            tsize=None, blksize_max=65464, windowsize_max=64, upload_max=1 << 30,
            retransmit_ms=1000, retries=5, backoff=True, unverified_resends=1, quiet_waits=2,
            dally_ms=10000, size=size_bytes(2000)):
    setup = (boolean(write) + boolean(netascii) + option(blksize, u16) + option(windowsize, u16)
             + option(timeout, u8) + option(tsize, u64) + u16(blksize_max) + u16(windowsize_max)
             + u64(upload_max) + u16(retransmit_ms) + u8(retries) + boolean(backoff)
             + option(unverified_resends, u8) + u8(quiet_waits) + u16(dally_ms) + size)
    return setup + vec(steps, lambda s: s)


SESSION = {
    "rrq-plain-complete": session([step("Ack", b) for b in range(1, 5)]),
    "rrq-oack-window-dupack-timeout": session(
        [step("Ack", 0), step("AckAhead", 2), step("Ack", 2), step("Ack", 2), step("Fire"),
         step("AckAhead", 4), step("AckAhead", 4), step("AckAhead", 4)],
        blksize=512, windowsize=4, tsize=0, size=size_blocks(9, 100)),
    "rrq-peer-gone-gives-up": session([step("Fire") for _ in range(10)], timeout=1),
    "rrq-spoofed-repeats": session([step("DuplicateRequest"), step("DuplicateRequest"),
                                    step("Fire"), step("DuplicateRequest"), step("Wait", 3000)]),
    "rrq-wrap-window-32768": session([step("Ack", 0)] + [step("AckAhead", 32768)] * 3
                                     + [step("Ack", 65535), step("AckSent")],
                                     blksize=8, windowsize=32768, windowsize_max=65535,
                                     size=size_blocks(100000, 0)),
    "rrq-error-abort-unreachable": session([step("Ack", 1), step("Abort"), step("Ack", 2),
                                            step("Unreachable"), step("Error", 8)]),
    "wrq-plain-commit": session([step("Data", 0, FULL), step("Data", 0, FULL),
                                 step("Data", 0, FULL), step("Data", 0, short(100)),
                                 step("Data", -1, short(100)), step("Commit"),
                                 step("Data", -1, short(100)), step("Fire")],
                                write=True, size=size_bytes(0)),
    "wrq-oack-window-gaps": session([step("Data", 0, FULL), step("Data", 1, FULL),
                                     step("Data", 0, FULL), step("Data", -1, FULL),
                                     step("Data", 0, over(3))],
                                    write=True, blksize=8, windowsize=4, tsize=64),
    "wrq-store-fails": session([step("Data", 0, FULL), step("StoreFail"),
                                step("Data", 0, FULL)], write=True),
    "wrq-commit-fails-after-peer-error": session(
        [step("Data", 0, short(3)), step("Error", 0), step("CommitFail")], write=True),
    "rrq-window-acks-complete": session([step("AckSent") for _ in range(30)],
                                        blksize=1024, windowsize=8, size=size_blocks(100, 7)),
    # Crossing the wrap on upload takes 65 536 datagrams: as a seed it
    # made every mutation of it that slow (2 500 executions a second
    # instead of 40 000), so it is left to tests/simulation.rs.
    "wrq-long-upload": session([step("DataRun", 250)] * 4
                               + [step("Data", 0, short(5)), step("Commit"),
                                  step("Data", -1, short(5))],
                               write=True, blksize=8, windowsize=16),
    "raw-packets": session([step("Raw", WIRE["ack-1"]), step("Raw", WIRE["data-1"]),
                            step("Raw", WIRE["error-8-no-nul"]), step("Raw", b"\x00\x04")]),
}

# ----------------------------------------------------------------- endpoint

OPS = ["Service", "Ack", "Data", "Error", "Wait", "Release", "Drain"]


def service(frm, datagram, truncated=False):
    return variant(0, 7) + u8(frm) + datagram + boolean(truncated)


def request(i):
    return variant(0, 3) + u8(i)


REPEAT = variant(1, 3)


def raw(b):
    return variant(2, 3) + bytes_vec(b)


def ack(frm, block):
    return variant(1, 7) + u8(frm) + u16(block)


def data(frm, block, length):
    return variant(2, 7) + u8(frm) + u16(block) + u16(length)


def error(frm):
    return variant(3, 7) + u8(frm)


def wait(ms):
    return variant(4, 7) + u16(ms)


def release(n):
    return variant(5, 7) + u8(n)


DRAIN = variant(6, 7)


def endpoint(ops, sessions_max=3, spare=1, per_client=2, restart_ms=1000):
    return u8(sessions_max) + u8(spare) + u8(per_client) + u16(restart_ms) + vec(ops, lambda o: o)


ENDPOINT = {
    "uefi-tsize-probe": endpoint([service(0, request(1)), error(0), service(0, request(0)),
                                  ack(0, 1), ack(0, 2), ack(0, 3), ack(0, 4), ack(0, 5),
                                  ack(0, 6), release(0)]),
    "repeat-before-and-after-verification": endpoint(
        [service(0, request(0)), service(0, REPEAT), ack(0, 1), service(0, REPEAT),
         wait(1500), service(0, REPEAT), service(0, request(2))]),
    "limits-full-table-release": endpoint(
        [service(p, request(p % 3)) for p in range(8)]
        + [wait(5000), wait(5000), wait(5000), release(0), release(1), service(5, request(0))]),
    "upload-and-garbage": endpoint(
        [service(1, request(3)), data(1, 1, 512), data(1, 2, 10), service(1, REPEAT),
         service(2, raw(b"\x00\x04\x00\x01")), service(2, raw(b"\xff\xff")),
         service(2, request(4)), service(2, request(6)), service(3, request(5)),
         service(3, request(0), truncated=True)]),
    "drain": endpoint([service(0, request(0)), DRAIN, service(1, request(0)),
                       service(0, REPEAT), wait(20000)]),
}

if __name__ == "__main__":
    for target, seeds in [("wire", WIRE), ("negotiate", NEGOTIATE), ("session", SESSION),
                          ("endpoint", ENDPOINT)]:
        for n, blob in seeds.items():
            write(target, n, blob)
