//! What depends on addresses and interfaces: dual-stack `[::]`, a
//! dual-stack socket systemd passes, and blksize capped to the MTU of the
//! interface a request came in on. Wildcard addresses and MTU changes stay
//! inside a network namespace each test makes for itself (`unshare
//! --net`), with real clients on its loopback; every wait is bounded.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `dir/root` holding `boot.txt` ("booted\n"), the file most tests fetch.
fn boot_root(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("boot.txt"), b"booted\n").unwrap();
    root
}

/// A server's log the script wrote into `dir`, empty if it wrote none.
fn log_of(dir: &TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Runs `script` with sh in network and PID namespaces of its own, its
/// loopback up, with UFTPD, ROOT and LOGS set; None when namespaces are not
/// available here (the caller skips).
fn in_namespace(
    script: &str,
    root: &std::path::Path,
    logs: &std::path::Path,
) -> Option<ClientOutput> {
    for tool in ["unshare", "ip", "timeout"] {
        if skip_if_missing(tool) {
            return None;
        }
    }
    let probe = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("SKIPPING: cannot make a network namespace (needs root)");
        return None;
    }
    let script = format!(
        "set -u\nip link set lo up\n\
         up() {{ i=0; until [ \"$(grep -c 'listening on' \"$1\")\" -ge \"$2\" ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; }}\n\
         {script}"
    );
    Some(run_client(
        Command::new("timeout")
            // A PID namespace too: when the script ends, the kernel ends
            // every process left in it, so none outlives the test holding
            // its pipes.
            .args([
                "60",
                "unshare",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ])
            .env("UFTPD", env!("CARGO_BIN_EXE_uftpd"))
            .env("ROOT", root)
            .env("LOGS", logs),
        Duration::from_secs(70),
    ))
}

/// `--listen [::]` serves IPv4 clients too, and a dual-stack socket that
/// systemd passes (its default `BindIPv6Only=`) serves both families,
/// IPv4 clients logged as IPv4 and refused over IPv4. Wildcard addresses
/// are bound only inside a network namespace of the test's own, with real
/// clients (curl) on its loopback.
#[test]
fn dual_stack_serves_ipv4_clients_in_a_namespace() {
    if skip_on_stand_in("uftpd's dual-stack")
        || skip_if_missing("curl")
        || skip_if_missing("systemd-socket-activate")
    {
        return;
    }
    let dir = TempDir::new("dual-stack");
    let root = boot_root(&dir);
    // Every wait in the script is bounded (10 s each); `timeout` bounds all.
    let script = r#"
"$UFTPD" --listen '[::]:6969' --cores 2 --no-stats "$ROOT" 2>"$LOGS/own.log" & pid=$!
up "$LOGS/own.log" 2
echo "own v4: $(curl -s --max-time 10 tftp://127.0.0.1:6969/boot.txt)"
echo "own v6: $(curl -s -g --max-time 10 'tftp://[::1]:6969/boot.txt')"
kill $pid; wait $pid
"$UFTPD" --listen '[::]:0' --listen :0 --cores 1 --no-stats "$ROOT" 2>"$LOGS/free.log" & pid=$!
up "$LOGS/free.log" 4
kill $pid; wait $pid
systemd-socket-activate --datagram -l '[::]:6970' "$UFTPD" --cores 2 --no-stats "$ROOT" 2>"$LOGS/passed.log" & pid=$!
sleep 0.2
echo "passed v4: $(curl -s --max-time 10 tftp://127.0.0.1:6970/boot.txt)"
echo "passed v6: $(curl -s -g --max-time 10 'tftp://[::1]:6970/boot.txt')"
curl -s --max-time 10 -o /dev/null tftp://127.0.0.1:6970/missing; echo "passed missing: $?"
kill $pid; wait $pid
"#;
    let Some(out) = in_namespace(script, &root, dir.path()) else {
        return;
    };
    let logs = ["own.log", "free.log", "passed.log"].map(|f| log_of(&dir, f));
    let all = format!("{}\n{}", out.describe(), logs.join("\n"));
    for line in [
        "own v4: booted",
        "own v6: booted",
        "passed v4: booted",
        "passed v6: booted",
        // curl's exit code for TFTP "file not found".
        "passed missing: 68",
    ] {
        assert!(out.stdout.contains(line), "no {line:?}\n{all}");
    }
    assert!(logs[0].contains("listening on 0.0.0.0:6969"), "{all}");
    assert!(logs[0].contains("listening on [::]:6969"), "{all}");
    // [::]:0 and :0: a free port each, both families on each.
    let ports: BTreeSet<&str> = logs[1]
        .lines()
        .filter_map(|l| l.split("listening on ").nth(1))
        .filter_map(|a| a.rsplit(':').next())
        .collect();
    assert_eq!(ports.len(), 2, "{all}");
    assert_eq!(logs[1].matches("listening on ").count(), 4, "{all}");
    // The IPv4 client of the dual-stack socket is an IPv4 address.
    assert!(logs[2].contains("to 127.0.0.1:"), "{all}");
    assert!(!logs[2].contains("::ffff:"), "{all}");
}

/// Without --blksize-max, blksize is capped to the MTU of the interface
/// the request came in on (1500 here: 1468 over IPv4, 1448 over IPv6), as
/// atftp sees in the OACK; with it the operator's cap holds everywhere.
#[test]
fn blksize_follows_the_interface_mtu_unless_capped_by_the_operator() {
    if skip_on_stand_in("uftpd's MTU cap") || skip_if_missing("atftp") {
        return;
    }
    let dir = TempDir::new("mtu");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let want = write_random_file(&root.join("big.bin"), 7, 100_000);
    let script = r#"
ip link set lo mtu 1500
get() { atftp --option "blksize 65464" --trace -g -r big.bin -l "$LOGS/$1" "$2" "$3" 2>&1 | grep -o 'OACK <blksize: [0-9]*' | sed "s/^/$1 /"; }
"$UFTPD" --listen 127.0.0.1:6969 --listen '[::1]:6969' --cores 1 --no-stats "$ROOT" 2>"$LOGS/capped.log" & pid=$!
up "$LOGS/capped.log" 2
get v4 127.0.0.1 6969
get v6 ::1 6969
kill $pid; wait $pid
"$UFTPD" --listen 127.0.0.1:6970 --blksize-max 65464 --cores 1 --no-stats "$ROOT" 2>"$LOGS/operator.log" & pid=$!
up "$LOGS/operator.log" 1
get operator 127.0.0.1 6970
kill $pid; wait $pid
"#;
    let Some(out) = in_namespace(script, &root, dir.path()) else {
        return;
    };
    let all = format!(
        "{}\n{}\n{}",
        out.describe(),
        log_of(&dir, "capped.log"),
        log_of(&dir, "operator.log")
    );
    for line in [
        "v4 OACK <blksize: 1468",
        "v6 OACK <blksize: 1448",
        "operator OACK <blksize: 65464",
    ] {
        assert!(out.stdout.contains(line), "no {line:?}\n{all}");
    }
    for got in ["v4", "v6", "operator"] {
        assert_file_eq(&dir.join(got), &want, got);
    }
}

/// Started without root, with only the capabilities systemd's
/// `AmbientCapabilities=` would give (port 69, locked memory), uftpd
/// binds port 69 and then holds no capability in any thread; with a
/// `--port-range` below 1024 it keeps CAP_NET_BIND_SERVICE alone, which
/// its transfers need. Read from /proc for every thread.
#[test]
fn without_root_no_thread_keeps_a_capability_it_does_not_need() {
    if skip_on_stand_in("uftpd's capabilities")
        || skip_if_missing("setpriv")
        || skip_if_missing("curl")
    {
        return;
    }
    let dir = TempDir::new("caps");
    let root = boot_root(&dir);
    // nobody must reach the root and the logs.
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.path(), root.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let script = r#"
caps() { for t in /proc/$1/task/*; do echo "$2 $(grep -h '^Cap\(Eff\|Prm\|Amb\)' $t/status | tr -s '\t\n' '  ')"; done; }
as_nobody() { exec setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps +net_bind_service,+ipc_lock --ambient-caps +net_bind_service,+ipc_lock "$@"; }
(as_nobody "$UFTPD" --listen 127.0.0.1:69 --cores 2 --stats 127.0.0.1:0 "$ROOT" 2>"$LOGS/plain.log") & pid=$!
up "$LOGS/plain.log" 1
echo "plain: $(curl -s --max-time 10 tftp://127.0.0.1:69/boot.txt)"
caps $pid plain
kill $pid; wait $pid
(as_nobody "$UFTPD" --listen 127.0.0.1:69 --port-range 600:700 --cores 2 --no-stats "$ROOT" 2>"$LOGS/range.log") & pid=$!
up "$LOGS/range.log" 1
echo "range: $(curl -s --max-time 10 tftp://127.0.0.1:69/boot.txt)"
caps $pid range
kill $pid; wait $pid
"#;
    let Some(out) = in_namespace(script, &root, dir.path()) else {
        return;
    };
    let all = format!(
        "{}\n{}\n{}",
        out.describe(),
        log_of(&dir, "plain.log"),
        log_of(&dir, "range.log")
    );
    assert!(out.stdout.contains("plain: booted"), "{all}");
    assert!(out.stdout.contains("range: booted"), "{all}");
    let threads = |tag: &str| -> Vec<String> {
        out.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{tag} Cap")))
            .map(str::to_string)
            .collect()
    };
    let plain = threads("plain");
    // main, log, two shards, two stats threads.
    assert!(plain.len() >= 6, "{all}");
    for line in &plain {
        assert_eq!(
            line.matches("0000000000000000").count(),
            3,
            "a thread keeps a capability: {line}\n{all}"
        );
    }
    let range = threads("range");
    // CAP_NET_BIND_SERVICE is bit 10: effective and permitted in the main
    // thread and the shards (which bind the transfer ports), nothing in
    // the threads that never bind (logging), no ambient set anywhere.
    let keeping = range
        .iter()
        .filter(|l| l.matches("0000000000000400").count() == 2)
        .count();
    assert!(keeping >= 3, "{all}");
    for line in &range {
        for set in line.split_whitespace().filter(|w| w.len() == 16) {
            assert!(
                set == "0000000000000400" || set == "0000000000000000",
                "{line}\n{all}"
            );
        }
        assert!(line.contains("CapAmb: 0000000000000000"), "{line}\n{all}");
    }
    assert!(log_of(&dir, "range.log").contains("keeping CAP_NET_BIND_SERVICE only"));
}

/// A link-local address names its interface (`[fe80::1%v0]:69`, by name
/// or index): uftpd binds it and serves a client on the other end of a
/// veth pair, replies leaving through that interface.
#[test]
fn link_local_addresses_with_a_scope_are_served() {
    if skip_on_stand_in("uftpd's link-local listen") || skip_if_missing("curl") {
        return;
    }
    let dir = TempDir::new("link-local");
    let root = boot_root(&dir);
    let script = r#"
ip link add v0 type veth peer name v1
ip link set v0 up
ip link set v1 up
ip addr add fe80::1/64 dev v0 nodad
ip addr add fe80::2/64 dev v1 nodad
"$UFTPD" --listen '[fe80::1%v0]:69' --cores 2 --no-stats "$ROOT" 2>"$LOGS/ll.log" & pid=$!
up "$LOGS/ll.log" 1
i=0; until [ $i -ge 20 ]; do got=$(curl -s --max-time 2 -g 'tftp://[fe80::1%25v1]:69/boot.txt') && break; i=$((i+1)); sleep 0.2; done
echo "link-local: $got"
kill $pid; wait $pid
"#;
    let Some(out) = in_namespace(script, &root, dir.path()) else {
        return;
    };
    let log = log_of(&dir, "ll.log");
    assert!(
        out.stdout.contains("link-local: booted"),
        "{}\n{log}",
        out.describe()
    );
    assert!(log.contains("listening on [fe80::1%"), "{log}");
    assert!(log.contains("to [fe80::2%"), "{log}");
}
