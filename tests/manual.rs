//! The man page and shell completions in dist/ are what the clap
//! definitions generate today, and the man page renders.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const REGENERATE: &str = "regenerate with dist/generate.sh";

fn uftpd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uftpd"))
}

fn checked_in(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()))
}

#[test]
fn the_checked_in_man_page_is_up_to_date() {
    let dir = TempDir::new("manual");
    let out = uftpd()
        .arg("--generate-man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read(dir.join("uftpd.8")).unwrap();
    assert!(
        fresh == checked_in("dist/uftpd.8"),
        "dist/uftpd.8 is stale: {REGENERATE}"
    );
    // Every flag --help shows is in the page (hidden ones are not).
    let page = String::from_utf8_lossy(&fresh);
    for flag in [
        "port\\-range",
        "refuse",
        "map\\-file",
        "user",
        "stats\\-allow",
    ] {
        assert!(page.contains(&format!("\\-\\-{flag}")), "--{flag} missing");
    }
    assert!(!page.contains("generate\\-man"));
}

#[test]
fn the_checked_in_completions_are_up_to_date() {
    for (shell, file) in [
        ("bash", "dist/completions/uftpd.bash"),
        ("zsh", "dist/completions/_uftpd"),
        ("fish", "dist/completions/uftpd.fish"),
    ] {
        let out = uftpd()
            .args(["--generate-completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            out.stdout == checked_in(file),
            "{file} is stale: {REGENERATE}"
        );
    }
    // Generation is exclusive: no ROOT, no other flag.
    let out = uftpd()
        .args(["--generate-completions", "bash", "--create"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_renders_the_page() {
    if skip_if_missing("man") {
        return;
    }
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/uftpd.8");
    // --warnings: groff reports bad requests and escapes on stderr.
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warnings}");
    assert!(warnings.trim().is_empty(), "groff warnings:\n{warnings}");
    for heading in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "TFTPD-HPA COMMAND LINE",
        "EXIT STATUS",
    ] {
        assert!(text.contains(heading), "{heading} missing:\n{text}");
    }
    assert!(text.contains("--port-range"), "{text}");
}

/// The files `[package.metadata.deb]` packages exist (cargo-deb is not
/// needed to check that), and the maintainer script leaves room for
/// cargo-deb's systemd snippets.
#[test]
fn the_deb_assets_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let assets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\""))
        .filter_map(|l| l.split('"').next())
        .filter(|src| !src.starts_with("target/"))
        .collect();
    assert!(assets.len() >= 5, "{assets:?}");
    for src in assets {
        let path = root.join(src);
        // The in.tftpd symlink points at the installed binary, so it dangles
        // here: it must be a link to /usr/sbin/uftpd.
        if let Ok(target) = std::fs::read_link(&path) {
            assert_eq!(target, Path::new("/usr/sbin/uftpd"), "{src}");
            continue;
        }
        assert!(path.is_file(), "deb asset {src} is missing");
    }
    for unit in ["dist/uftpd.service", "dist/uftpd.socket"] {
        assert!(root.join(unit).is_file(), "{unit}");
    }
    let postinst = std::fs::read_to_string(root.join("dist/debian/postinst")).unwrap();
    assert!(postinst.contains("#DEBHELPER#"));
    assert!(postinst.contains("adduser --system"));
}
