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

/// Runs `script` with sh in a network namespace of its own, its loopback
/// up, with UFTPD, ROOT and LOGS set; None when namespaces are not
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
        .args(["--net", "true"])
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
            .args(["60", "unshare", "--net", "sh", "-c", &script])
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
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("boot.txt"), b"booted\n").unwrap();
    // Every wait in the script is bounded (10 s each); `timeout` bounds all.
    let script = r#"
"$UFTPD" --listen '[::]:6969' --cores 2 --no-stats "$ROOT" 2>"$LOGS/own.log" & pid=$!
up "$LOGS/own.log" 2
echo "own v4: $(curl -s --max-time 10 tftp://127.0.0.1:6969/boot.txt)"
echo "own v6: $(curl -s -g --max-time 10 'tftp://[::1]:6969/boot.txt')"
kill $pid; wait $pid
"$UFTPD" --listen '[::]:0' --cores 1 --no-stats "$ROOT" 2>"$LOGS/free.log" & pid=$!
up "$LOGS/free.log" 2
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
    let logs = ["own.log", "free.log", "passed.log"]
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default());
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
    // [::]:0: one free port for both families.
    let ports: BTreeSet<&str> = logs[1]
        .lines()
        .filter_map(|l| l.split("listening on ").nth(1))
        .filter_map(|a| a.rsplit(':').next())
        .collect();
    assert_eq!(ports.len(), 1, "{all}");
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
        std::fs::read_to_string(dir.join("capped.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("operator.log")).unwrap_or_default()
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
