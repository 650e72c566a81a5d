//! Remap rules in the real binary: `--map-file` rewriting and refusing
//! requests on loopback, the plain-flag clean-ups, and `--map-test`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The first reply to a request, as an ERROR's code and text (or panics).
fn error_reply(server: &Server, request: &[u8]) -> (u16, String) {
    match request_first_reply(server.addr(), request, Duration::from_secs(5)) {
        Some((Packet::Error { code, msg }, _)) => (code, msg),
        other => panic!("expected an ERROR, got {other:?}\n{}", server.log()),
    }
}

#[test]
fn map_file_rewrites_winpe_backslash_names() {
    if skip_on_stand_in("uftpd's own --map-file checks") {
        return;
    }
    let dir = TempDir::new("remap-winpe");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let bcd = write_random_file(&root.join("boot/bcd"), 7, 3000);
    let map = dir.join("winpe.map");
    std::fs::write(
        &map,
        "# WinPE asks for \\Boot\\BCD; the disk holds boot/bcd\n\
         ri   ^[/\\\\]?boot[/\\\\]bcd$   boot/bcd\n\
         rg   \\\\                     /\n",
    )
    .unwrap();
    // Without the map, the name is looked up as it is: no such file.
    let plain = Server::start(&root, &[]);
    let (code, _) = error_reply(&plain, &rrq(b"\\Boot\\BCD", "octet", &[]));
    assert_eq!(code, 1, "{}", plain.log());
    drop(plain);

    let server = Server::start(&root, &["--map-file", map.to_str().unwrap()]);
    for name in [&b"\\Boot\\BCD"[..], b"/BOOT/BCD", b"boot\\bcd"] {
        let got = raw_get(server.addr(), name, "octet", &[])
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", String::from_utf8_lossy(name), server.log()));
        assert_same_bytes(&got.data, &bcd, "boot/bcd through the map");
    }
    // The info line names the file served, not the one asked for.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.log().contains("sent \"boot/bcd\"") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.log().contains("sent \"boot/bcd\""),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("remapping names with 2 rules"),
        "{}",
        server.log()
    );
}

#[test]
fn sighup_rereads_the_map_file_and_a_broken_one_keeps_the_old_rules() {
    if skip_on_stand_in("uftpd's own SIGHUP") {
        return;
    }
    let dir = TempDir::new("remap-hup");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let one = write_random_file(&root.join("one.bin"), 11, 1500);
    let two = write_random_file(&root.join("two.bin"), 12, 1700);
    let map = dir.join("boot.map");
    std::fs::write(&map, "r ^boot$ one.bin\n").unwrap();
    let server = Server::start(&root, &["--map-file", map.to_str().unwrap()]);
    let get = |what: &str| {
        raw_get(server.addr(), b"boot", "octet", &[])
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", server.log()))
            .data
    };
    assert_same_bytes(&get("before"), &one, "the first rules");

    std::fs::write(&map, "r ^boot$ two.bin\n").unwrap();
    server.signal("-HUP");
    // Bounded: the reload is logged once main has put the rules in force.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server
        .log()
        .contains("SIGHUP: remapping names with 1 rules")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_same_bytes(&get("after the reload"), &two, "the re-read rules");

    std::fs::write(&map, "r ^(boot$ one.bin\n").unwrap();
    server.signal("-HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.log().contains("the rules in force stay") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.log().contains("the rules in force stay"),
        "{}",
        server.log()
    );
    assert_same_bytes(&get("after a broken file"), &two, "the rules kept");
}

#[test]
fn map_file_e_rule_passes_and_a_rule_refuses() {
    if skip_on_stand_in("uftpd's own --map-file checks") {
        return;
    }
    let dir = TempDir::new("remap-refuse");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("public")).unwrap();
    std::fs::write(root.join("public/a.txt"), b"public\n").unwrap();
    std::fs::write(root.join("secret.txt"), b"secret\n").unwrap();
    let map = dir.join("refuse.map");
    // Names under public/ are final (e); everything else is refused, with
    // the rule's own message, and a loop in the rules is cut short.
    std::fs::write(
        &map,
        "e    ^public/\n\
         rg   ^loop  loop\n\
         a    .      Only\\ public/\\ is\\ served\n",
    )
    .unwrap();
    let server = Server::start(&root, &["--map-file", map.to_str().unwrap()]);
    let got = raw_get(server.addr(), b"public/a.txt", "octet", &[]).unwrap();
    assert_eq!(got.data, b"public\n");
    let (code, msg) = error_reply(&server, &rrq(b"secret.txt", "octet", &[]));
    assert_eq!((code, msg.as_str()), (2, "Only public/ is served"));
    let (code, msg) = error_reply(&server, &rrq(b"loop", "octet", &[]));
    assert_eq!((code, msg.as_str()), (2, "Remap table failure"));
    // A `..` is resolved before the rules look: `public/../secret.txt` is
    // `secret.txt`, and refused as that.
    let (code, msg) = error_reply(&server, &rrq(b"public/../secret.txt", "octet", &[]));
    assert_eq!((code, msg.as_str()), (2, "Only public/ is served"));
    let got = raw_get(server.addr(), b"public/x/../a.txt", "octet", &[]).unwrap();
    assert_eq!(got.data, b"public\n");
    // The rules apply to uploads too (a WRQ refused before uploads are).
    let (code, msg) = error_reply(&server, &wrq(b"x", "octet", &[]));
    assert_eq!((code, msg.as_str()), (2, "Only public/ is served"));
}

#[test]
fn lowercase_and_trailing_garbage_flags() {
    if skip_on_stand_in("uftpd-only flags") {
        return;
    }
    let dir = TempDir::new("remap-flags");
    std::fs::write(dir.join("pxelinux.0"), b"rom\n").unwrap();
    let server = Server::start(dir.path(), &["--lowercase", "--strip-trailing-garbage"]);
    let got = raw_get(server.addr(), b"PXELinux.0\xff\xff", "octet", &[])
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_eq!(got.data, b"rom\n");
}

fn uftpd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uftpd"))
}

/// Runs `uftpd ARGS` with `input` on stdin: exit code, stdout, stderr.
fn run_with_input(args: &[&str], input: &[u8]) -> (Option<i32>, String, String) {
    let mut child = uftpd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn map_test_prints_what_each_name_maps_to() {
    if skip_on_stand_in("uftpd's --map-test") {
        return;
    }
    let dir = TempDir::new("remap-maptest");
    let map = dir.join("sample.rules");
    // From tftpd-hpa's sample.rules.
    std::fs::write(
        &map,
        "ri   ^[a-z]:                # Remove \"drive letters\"\n\
         rg   \\\\          /          # Convert backslashes to slashes\n\
         e    ^ok/                   # These are always ok\n\
         r    ^[^/]       /tftpboot/\\0   # Convert non-absolute files\n\
         a    \\.pvt$                 # Reject requests for private files\n\
         r    ^/tftpboot/guest/  /tftpboot/guest-\\x/   # per-client\n",
    )
    .unwrap();
    let input = b"C:\\foo\\bar\nsecret.pvt\nok/x\tPUT\nguest/f\t10.0.0.1\n\nname\tbogus\n";
    let (code, out, err) = run_with_input(&["--map-test", map.to_str().unwrap()], input);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "/foo/bar\n\
         ERROR: Access denied (refused by the rule at line 5)\n\
         ok/x\n\
         /tftpboot/guest-0A000001/f\n\
         \n\
         INVALID: bogus is neither GET, PUT nor an IP address\n"
    );
    assert_eq!(err, "");

    // With --lowercase, the name is lower-cased before the rules see it.
    let (code, out, _) = run_with_input(
        &["--lowercase", "--map-test", map.to_str().unwrap()],
        b"OK/X\n",
    );
    assert_eq!((code, out.as_str()), (Some(0), "ok/x\n"));
}

#[test]
fn a_bad_map_file_stops_the_start_with_one_line_per_problem() {
    let dir = TempDir::new("remap-bad");
    let map = dir.join("bad.map");
    std::fs::write(&map, "r (a x\nr ok fine\nq b\n").unwrap();
    let path = map.to_str().unwrap();
    for args in [
        vec!["--map-file", path, dir.path().to_str().unwrap()],
        vec!["--map-test", path],
    ] {
        let (code, out, err) = run_with_input(&args, b"");
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(out, "");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines[0].contains(&format!("{path}: line 1: ")), "{err}");
        assert!(lines[1].contains(&format!("{path}: line 3: ")), "{err}");
    }
    let (code, _, err) = run_with_input(&["--map-file", "/nonexistent/map", "/tmp"], b"");
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
}
