#!/usr/bin/env python3
"""bench/scenarios.py: uftpd against tftpd-hpa, atftpd and dnsmasq, side by
side in one run, on loopback, with one generator (uftpd-load).

Every server runs at once on 127.0.0.1, each in its own cgroup v2, so its
CPU time is counted exactly (cpu.stat usage_usec: every thread and every
child, tftpd-hpa's per-transfer processes included). Each scenario runs
against each server in turn, the order rotating from one repetition to the
next, REPS times; medians are reported, and each uftpd figure as a ratio to
the best other server in the same run (the noise of a 2-core machine hits
every server alike). dnsmasq serves TFTP on port 69 only; the others get
high ports.

Usage (as root: cgroups, port 69, dropping to nobody):
    python3 bench/scenarios.py                       # S1-S5, 3 reps
    python3 bench/scenarios.py --scenarios S6,S7 --reps 1
    python3 bench/scenarios.py --curve               # the cost curve + PNG
    python3 bench/scenarios.py --servers uftpd,uftpd-q --scenarios S2
Appends a dated section to bench/RESULTS.md (--results) with the exact
command, commit, machine, kernel and date. --dry-run prints the plan.

Peers: tftpd-hpa and atftpd are taken out of their Debian packages with
dpkg -x into /opt/uftpd-peers (they conflict as packages, and installing
either would start a service); dnsmasq comes from dnsmasq-base (no
service). Missing ones are fetched with apt-get, or skipped with a note.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS = "/opt/uftpd-peers"
MIB = 1 << 20

# name -> (bytes); random content, made once per run.
FILES = {"f64k": 64 << 10, "f1m": 1 * MIB, "f8m": 8 * MIB, "f64m": 64 * MIB}

# A farm's clients come from many addresses, not one: the storms bind their
# transfers to 40 loopback addresses in turn (uftpd's per-client limits, like
# any server's, would otherwise see one client opening 10,000 sessions).
MANY_CLIENTS = ["--bind", "127.0.0.10-127.0.0.49"]

# The scenarios of issue 8. `transfers` defaults to `sessions`.
SCENARIOS = {
    "S1": dict(desc="PXE storm: 64 x 8 MiB lock-step, blksize 1432",
               file="f8m", sessions=64, args=["--blksize", "1432"]),
    # From 40 source addresses, as 32 boot loaders are 32 machines: from
    # one address, 1,500 transfers/s exceed uftpd's per-client rate limit
    # (--client-rate 512/s per shard after a burst of 2,048), which with
    # --cores 1 cut the run to 900/s with 1 s retries.
    "S2": dict(desc="boot loaders: 32 sessions x 64 KiB back to back (5 s), from 40 addresses",
               file="f64k", sessions=32, duration=5.0, args=[*MANY_CLIENTS]),
    "S3": dict(desc="one 64 MiB image, blksize 65464, lock-step",
               file="f64m", sessions=1, args=["--blksize", "65464"]),
    "S3w": dict(desc="one 64 MiB image, blksize 65464, windowsize 16",
                file="f64m", sessions=1, args=["--blksize", "65464", "--windowsize", "16"]),
    "S4": dict(desc="8 MiB, no options (512-byte lock-step)",
               file="f8m", sessions=1, args=[]),
    "S5": dict(desc="UEFI storm: 64 x 8 MiB, blksize 1468, windowsize 4",
               file="f8m", sessions=64, args=["--blksize", "1468", "--windowsize", "4"]),
    "S6": dict(desc="thundering herd: 1,000 x 8 MiB starting within one second",
               file="f8m", sessions=1000, args=["--blksize", "1432", "--rate", "1000", *MANY_CLIENTS],
               timeout_s=600),
    "S7": dict(desc="10,000 concurrent sessions of a 1 MiB file",
               file="f1m", sessions=10000, args=["--blksize", "1432", "--retries", "8", *MANY_CLIENTS],
               timeout_s=600),
}
# tuning.md's sweeps: 64 x 8 MiB with one knob moved.
for b in (512, 1432, 8192, 65464):
    SCENARIOS[f"Tb{b}"] = dict(desc=f"tuning: 64 x 8 MiB, blksize {b}, lock-step",
                               file="f8m", sessions=64, args=["--blksize", str(b)])
for w in (1, 4, 16, 64):
    SCENARIOS[f"Tw{w}"] = dict(desc=f"tuning: 64 x 8 MiB, blksize 1432, windowsize {w}",
                               file="f8m", sessions=64, args=["--blksize", "1432", "--windowsize", str(w)])
CURVE_SESSIONS = [1, 8, 64, 512, 4096]

# Which way is better, per figure.
HIGHER_BETTER = {"goodput_mbit_s", "transfers_per_s"}


def log(msg):
    print(f"[scenarios {time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.monotonic()


def run(cmd, **kw):
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)


# ------------------------------------------------------------------ peers

def ensure_peer(name):
    """The path of a peer server binary, fetching it if we can; None if not."""
    if name == "tftpd-hpa":
        path = f"{PEERS}/tftpd-hpa/usr/sbin/in.tftpd"
        pkg, dest = "tftpd-hpa", f"{PEERS}/tftpd-hpa"
    elif name == "atftpd":
        path = f"{PEERS}/atftpd/usr/sbin/atftpd"
        pkg, dest = "atftpd", f"{PEERS}/atftpd"
    elif name == "dnsmasq":
        path = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not os.path.exists(path):
            run(["apt-get", "install", "-y", "-q", "dnsmasq-base"],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return path if os.path.exists(path) else None
    else:
        return None
    if not os.path.exists(path):
        work = tempfile.mkdtemp()
        r = run(["apt-get", "download", "-q", pkg], cwd=work)
        debs = [f for f in os.listdir(work) if f.endswith(".deb")]
        if r.returncode == 0 and debs:
            os.makedirs(dest, exist_ok=True)
            deb = os.path.join(work, debs[0])
            run(["dpkg", "-x", deb, dest])
            # dpkg -x installs none of the package's dependencies (libwrap0
            # for both): install them, keeping the first of each alternative.
            depends = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
            wanted = [d.split("|")[0].split("(")[0].strip() for d in depends.split(",")]
            wanted = [w for w in wanted if w and not w.startswith("${")]
            if wanted:
                run(["apt-get", "install", "-y", "-q", *wanted],
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        shutil.rmtree(work, ignore_errors=True)
    return path if os.path.exists(path) else None


def version_of(server):
    try:
        if server["kind"] == "uftpd":
            return run([server["bin"], "--version"]).stdout.strip()
        if server["kind"] == "tftpd-hpa":
            return run([server["bin"], "-V"]).stdout.strip().splitlines()[0]
        if server["kind"] == "atftpd":
            return run([server["bin"], "-V"]).stdout.strip().splitlines()[0]
        if server["kind"] == "dnsmasq":
            return run([server["bin"], "--version"]).stdout.splitlines()[0]
    except (IndexError, OSError):
        pass
    return "?"


# ------------------------------------------------------------------ cgroups

def cgroup_root():
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    return None


class Cgroup:
    def __init__(self, root, name):
        self.path = os.path.join(root, f"uftpd-bench-{os.getpid()}-{name}")
        os.makedirs(self.path, exist_ok=True)

    def usage_s(self):
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) / 1e6
        return 0.0

    def procs(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def remove(self):
        for p in self.procs():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        for _ in range(20):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


# ------------------------------------------------------------------ servers

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def server_command(server, root, port, workdir):
    kind, b = server["kind"], server["bin"]
    if kind == "uftpd":
        return [*server.get("prefix", []), b, "--listen", f"127.0.0.1:{port}", "--stats", "127.0.0.1:0",
                "--max-sessions", "20000", *server.get("extra", []), root]
    if kind == "sol":
        return [b, "--listen", f"127.0.0.1:{port}", "--file", os.path.join(root, "f8m")]
    if kind == "tftpd-hpa":
        # Forks one child per transfer; drops to nobody by default.
        return [b, "-L", "-a", f"127.0.0.1:{port}", "-s", root]
    if kind == "atftpd":
        return [b, "--daemon", "--no-fork", "--port", str(port), "--bind-address", "127.0.0.1",
                "--maxthread", "20000", "--logfile", os.path.join(workdir, "atftpd.log"),
                "--user", "nobody.nogroup", root]
    if kind == "dnsmasq":
        return [b, "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                "--enable-tftp", f"--tftp-root={root}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--tftp-max=20000", "--pid-file=",
                f"--log-facility={os.path.join(workdir, 'dnsmasq.log')}"]
    raise ValueError(kind)


def wait_ready(port, seconds=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.1)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            s.sendto(b"\x00\x01no-such-file\x00octet\x00", ("127.0.0.1", port))
            s.recvfrom(2048)
            return True
        except OSError:
            pass
    return False


def start_server(server, root, cg_root, workdir):
    port = 69 if server["kind"] == "dnsmasq" else free_port()
    cg = Cgroup(cg_root, server["name"]) if cg_root else None
    logf = open(os.path.join(workdir, f"{server['name']}.log"), "w")

    def enter():
        if cg:
            with open(os.path.join(cg.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    cmd = server_command(server, root, port, workdir)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            preexec_fn=enter)
    server.update(port=port, proc=proc, cg=cg, cmd=cmd, logf=logf)
    if not wait_ready(port):
        raise RuntimeError(f"{server['name']} did not answer on port {port}: {' '.join(cmd)}")
    log(f"{server['name']}: pid {proc.pid} port {port}")


def stop_server(server):
    proc = server.get("proc")
    if proc:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if server.get("cg"):
        server["cg"].remove()
    if server.get("logf"):
        server["logf"].close()


def server_cpu_s(server):
    if server.get("cg"):
        return server["cg"].usage_s()
    # Without cgroups: the process itself (undercounts forking servers).
    with open(f"/proc/{server['proc'].pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / tck


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------ trials

def trial(load_bin, server, sc, root, threads):
    sessions = sc["sessions"]
    cmd = [load_bin, "--server", f"127.0.0.1:{server['port']}", "--file", sc["file"],
           "--expect-file", os.path.join(root, sc["file"]), "--sessions", str(sessions),
           "--threads", str(threads), "--json", "-", "-q", *sc["args"]]
    if "duration" in sc:
        cmd += ["--duration", str(sc["duration"])]
    else:
        cmd += ["--transfers", str(sc.get("transfers", sessions))]
    cpu0 = server_cpu_s(server)
    rss0 = rss_kib(server["proc"].pid)
    peak = rss0
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + sc.get("timeout_s", 180)
    while p.poll() is None and time.monotonic() < deadline:
        peak = max(peak, rss_kib(server["proc"].pid))
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
    out, err = p.communicate()
    cpu = server_cpu_s(server) - cpu0
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        log(f"  {server['name']} {sc['name']}: no report (exit {p.returncode}): {err.strip()[:300]}")
        return None
    gib = r["bytes"] / (1 << 30)
    return {
        "goodput_mbit_s": r["goodput_mbit_s"],
        "transfers_per_s": r["transfers_per_s"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "first_block_p99_ms": r["first_block_ms"]["p99"],
        "server_cpu_s_per_gib": cpu / gib if gib else None,
        "generator_cpu_s_per_gib": r["cpu_s"] / gib if gib else None,
        "failed": r["transfers_failed"],
        "ok": r["transfers_ok"],
        "failures": r["failures"],
        "generator_bound": r["generator_bound"],
        "rss_peak_kib_per_session": (peak - rss0) / sessions if server["kind"] == "uftpd" else None,
    }


FIGURES = ["goodput_mbit_s", "transfers_per_s", "p50_ms", "p99_ms", "first_block_p99_ms",
           "server_cpu_s_per_gib", "generator_cpu_s_per_gib"]


def median(results, key):
    vals = [r[key] for r in results if r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def best_other(medians, names, key):
    vals = [medians[n][key] for n in names if not n.startswith("uftpd") and n != "sol"
            and medians[n].get(key) is not None]
    if not vals:
        return None
    return max(vals) if key in HIGHER_BETTER else min(vals)


def table(scenarios, servers, meds, fails, reasons):
    names = [s["name"] for s in servers]
    lines = ["| scenario | server | goodput Mbit/s | transfers/s | p50 ms | p99 ms | first block p99 ms "
             "| server CPU-s/GiB | generator CPU-s/GiB | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = ["| scenario | goodput | transfers/s | p99 | server CPU/GiB | vs |", "|---|---|---|---|---|---|"]
    for sc in scenarios:
        m = meds[sc["name"]]
        for n in names:
            if n not in m:
                continue
            x = m[n]
            why = ", ".join(f"{k} {v}" for k, v in sorted(reasons[sc["name"]][n].items()))
            lines.append(f"| {sc['name']} | {n} | " + " | ".join(fmt(x.get(k)) for k in FIGURES)
                         + f" | {fails[sc['name']][n]}{' (' + why + ')' if why else ''} |")
        others = any(not n.startswith("uftpd") and n != "sol" for n in m)
        for n in names:
            if not n.startswith("uftpd") or n not in m or (not others and n == "uftpd"):
                continue
            cells = []
            for key in ["goodput_mbit_s", "transfers_per_s", "p99_ms", "server_cpu_s_per_gib"]:
                # Only uftpd variants ran: compare them with plain uftpd.
                b = best_other(m, list(m), key) if others else m.get("uftpd", {}).get(key)
                u = m[n].get(key)
                cells.append(f"{u / b:.2f}x" if (b and u is not None) else "n/a")
            label = sc["name"] if n == "uftpd" else f"{sc['name']} ({n})"
            ratios.append(f"| {label} | " + " | ".join(cells) + (" | best other |" if others else " | uftpd |"))
        if "sol" in m and "uftpd" in m:
            s, u = m["sol"].get("server_cpu_s_per_gib"), m["uftpd"].get("server_cpu_s_per_gib")
            if s and u:
                ratios.append(f"| {sc['name']} | | | | {u / s:.2f}x | speed-of-light responder |")
    return "\n".join(lines), "\n".join(ratios)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}"


def commit():
    r = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def plot_curve(curve, servers, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (apt-get install python3-matplotlib): no PNG")
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for key, ax, title in [("goodput_mbit_s", axes[0], "goodput (Mbit/s)"),
                           ("server_cpu_s_per_gib", axes[1], "server CPU-s per GiB"),
                           ("p99_ms", axes[2], "p99 transfer time (ms)")]:
        for s in servers:
            xs, ys = [], []
            for n in CURVE_SESSIONS:
                v = curve.get(n, {}).get(s["name"], {}).get(key)
                if v is not None:
                    xs.append(n)
                    ys.append(v)
            if xs:
                ax.plot(xs, ys, marker="o", label=s["name"])
        ax.set_xscale("log")
        if key != "goodput_mbit_s":
            ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions (1 MiB file, blksize 1432)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="S1,S2,S3,S3w,S4,S5")
    ap.add_argument("--servers", default="uftpd,tftpd-hpa,atftpd,dnsmasq",
                    help="any of uftpd, uftpd-q (quiet), uftpd-c1 (--cores 1), uftpd-c2 (--cores 2), uftpd-pinned (--pin), uftpd-c1-pinned, uftpd-nogso (--no-gso), uftpd-strays (--stray-errors), uftpd-smallrings (reduced rings: 192 KiB memlock, no CAP_IPC_LOCK), "
                         "sol (speed-of-light responder, S1/S5 only), tftpd-hpa, atftpd, dnsmasq")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="uftpd-load --threads")
    ap.add_argument("--curve", action="store_true", help="run the cost curve instead of scenarios")
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--budget-s", type=float, default=1500, help="no trial starts after this")
    ap.add_argument("--note", default="", help="a line added to the results section")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--neighbour", action="store_true",
                    help="run a busy process pinned to CPU 0 throughout (a CPU shared with other work)")
    a = ap.parse_args()
    # SIGTERM ends the run through the same cleanup as Ctrl-C: servers
    # stopped, cgroups removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    release = os.path.join(REPO, "target", "release")
    if not a.dry_run:
        r = run(["cargo", "build", "--release", "-q", "-p", "uftpd", "-p", "uftpd-load", "-p", "uftpd-sol"],
                cwd=REPO)
        if r.returncode != 0:
            sys.exit(f"cargo build failed:\n{r.stderr}")
    uftpd = os.path.join(release, "uftpd")
    load_bin = os.path.join(release, "uftpd-load")
    catalogue = {
        "uftpd": dict(kind="uftpd", bin=uftpd, extra=[]),
        "uftpd-q": dict(kind="uftpd", bin=uftpd, extra=["-q"]),
        "uftpd-c1": dict(kind="uftpd", bin=uftpd, extra=["--cores", "1"]),
        "uftpd-c2": dict(kind="uftpd", bin=uftpd, extra=["--cores", "2"]),
        "uftpd-pinned": dict(kind="uftpd", bin=uftpd, extra=["--pin"]),
        "uftpd-nogso": dict(kind="uftpd", bin=uftpd, extra=["--no-gso"]),
        # Reduced rings: under a 192 KiB RLIMIT_MEMLOCK and without
        # CAP_IPC_LOCK (which root has, and which exempts it) the shards fall
        # back to reduced rings (64 SQ entries, 128 send slots).
        "uftpd-smallrings": dict(kind="uftpd", bin=uftpd, extra=[],
                                 prefix=["setpriv", "--bounding-set", "-ipc_lock", "prlimit", "--memlock=196608"]),
        "uftpd-c1-pinned": dict(kind="uftpd", bin=uftpd, extra=["--cores", "1", "--pin"]),
        # A/B against another build: UFTPD_BEFORE_BIN=/path/to/uftpd.
        "uftpd-before": dict(kind="uftpd", bin=os.environ.get("UFTPD_BEFORE_BIN", uftpd), extra=[]),
        # Unconnected transfer sockets (ERROR 5 to strays), the default
        # before 2026-12-02.
        "uftpd-strays": dict(kind="uftpd", bin=uftpd, extra=["--stray-errors"]),
        "sol": dict(kind="sol", bin=os.path.join(release, "uftpd-sol")),
        "tftpd-hpa": dict(kind="tftpd-hpa"),
        "atftpd": dict(kind="atftpd"),
        "dnsmasq": dict(kind="dnsmasq"),
    }
    servers = []
    for name in a.servers.split(","):
        s = dict(catalogue[name], name=name)
        if "bin" not in s:
            s["bin"] = None if a.dry_run else ensure_peer(s["kind"])
            if not s["bin"] and not a.dry_run:
                log(f"{name}: not available, skipped")
                continue
        servers.append(s)
    if a.curve:
        scenarios = [dict(name=f"C{n}", desc=f"cost curve: {n} concurrent x 1 MiB, blksize 1432",
                          file="f1m", sessions=n, transfers=max(n, 16),
                          args=["--blksize", "1432", *(MANY_CLIENTS if n > 64 else [])],
                          timeout_s=600) for n in CURVE_SESSIONS]
    else:
        scenarios = [dict(SCENARIOS[n], name=n) for n in a.scenarios.split(",")]
    if a.dry_run:
        for sc in scenarios:
            print(sc["name"], sc["desc"], [s["name"] for s in servers])
        return

    os.nice(0)
    subprocess.run(["sh", "-c", "ulimit -n 1048576"], check=False)
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    work = tempfile.mkdtemp(prefix="uftpd-bench-")
    root = os.path.join(work, "root")
    os.makedirs(root)
    os.chmod(work, 0o755)
    os.chmod(root, 0o755)
    for name, size in FILES.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
        os.chmod(os.path.join(root, name), 0o644)
    cg_root = cgroup_root()
    if cg_root and not os.access(cg_root, os.W_OK):
        cg_root = None
    if not cg_root:
        log("warning: no writable cgroup v2; forking servers' CPU is undercounted")
    neighbour = None
    if a.neighbour:
        # A spinning loop pinned to CPU 0 at normal priority: what a DHCP or
        # HTTP server busy on the same machine does to the shard there.
        neighbour = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
        a.note = (a.note + "; " if a.note else "") + "a busy loop pinned to CPU 0 ran throughout"
    results = {sc["name"]: {s["name"]: [] for s in servers} for sc in scenarios}
    started = time.monotonic()
    try:
        for s in servers:
            start_server(s, root, cg_root, work)
        for rep in range(a.reps):
            for sc in scenarios:
                order = servers[rep % len(servers):] + servers[:rep % len(servers)]
                for s in order:
                    if s["kind"] == "sol" and sc["file"] != "f8m":
                        continue
                    if time.monotonic() - started > a.budget_s:
                        log("budget spent: no more trials")
                        raise StopIteration
                    if s["proc"].poll() is not None:
                        log(f"{s['name']} died; restarting")
                        start_server(s, root, cg_root, work)
                    r = trial(load_bin, s, sc, root, a.threads)
                    results[sc["name"]][s["name"]].append(r)
                    if r:
                        log(f"rep {rep + 1} {sc['name']:4} {s['name']:14} {r['goodput_mbit_s']:9.1f} Mbit/s "
                            f"{r['transfers_per_s']:8.1f} t/s p99 {r['p99_ms']:8.2f} ms "
                            f"cpu/GiB {fmt(r['server_cpu_s_per_gib'])} gen {fmt(r['generator_cpu_s_per_gib'])} "
                            f"failed {r['failed']}")
                    # Let the servers' sessions end (dallies, sockets).
                    time.sleep(0.5)
    except StopIteration:
        pass
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()
        for s in servers:
            stop_server(s)
        shutil.rmtree(work, ignore_errors=True)

    meds, fails, reasons = {}, {}, {}
    for sc in scenarios:
        meds[sc["name"]], fails[sc["name"]], reasons[sc["name"]] = {}, {}, {}
        for s in servers:
            rs = [r for r in results[sc["name"]][s["name"]] if r]
            if not rs:
                continue
            # Figures only from trials where something was served: a server
            # that failed every transfer has no latency to compare.
            served = [r for r in rs if r["ok"] > 0]
            meds[sc["name"]][s["name"]] = {k: median(served, k) for k in FIGURES + ["rss_peak_kib_per_session"]}
            fails[sc["name"]][s["name"]] = sum(r["failed"] for r in rs)
            why = {}
            for r in rs:
                for k, v in r["failures"].items():
                    why[k] = why.get(k, 0) + v
            reasons[sc["name"]][s["name"]] = why
    full, ratios = table(scenarios, servers, meds, fails, reasons)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"\n## {('Cost curve' if a.curve else 'Scenarios ' + a.scenarios)}: uftpd-load side by side ({now})\n",
           f"- command: `python3 bench/scenarios.py {' '.join(sys.argv[1:])}`",
           f"- commit {commit()}, {machine()}, date {now}",
           f"- {a.reps} repetitions, medians; order rotates per repetition; one uftpd-load "
           f"(--threads {a.threads}) on the same 2 CPUs; server CPU from each server's own cgroup v2",
           *[f"- {s['name']}: {version_of(s)}: `{' '.join(s.get('cmd', []))}`" for s in servers]]
    if a.note:
        out.append(f"- note: {a.note}")
    for sc in scenarios:
        out.append(f"- {sc['name']}: {sc['desc']}")
    out += ["", full, "", "uftpd as a ratio to the best other server in the same run "
            "(goodput, transfers/s: higher is better; p99, CPU/GiB: lower is better):", "", ratios, ""]
    rss = [(sc["name"], meds[sc["name"]].get("uftpd", {}).get("rss_peak_kib_per_session"))
           for sc in scenarios if meds[sc["name"]].get("uftpd")]
    rss = [f"{n} {v:.1f} KiB" for n, v in rss if v is not None and n in ("S6", "S7")]
    if rss:
        out.append("uftpd resident memory growth per concurrent session (peak VmRSS delta / sessions): "
                   + ", ".join(rss) + "\n")
    text = "\n".join(out)
    if a.curve:
        curve = {int(sc["name"][1:]): meds[sc["name"]] for sc in scenarios}
        png = os.path.join(HERE, "cost-curve.png")
        if plot_curve(curve, servers, png):
            text += "\n![cost curve](cost-curve.png)\n"
    with open(a.results, "a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
