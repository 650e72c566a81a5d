//! The stats port's two protocols from hostile bytes: an eAS0 byte stream
//! (cut into arbitrary reads) through the server and client sessions, and
//! an HTTP request head. Nothing may panic; every answer stays bounded;
//! a session that ended stays ended.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uftpd::stats::eas0::{
    ClientSession, Decoded, FRAME_LEN_MAX, Frame, LoginInfo, Nonce, Secret, ServerEvent,
    ServerSession,
};
use uftpd::stats::http;

#[derive(Arbitrary, Debug)]
struct Input {
    with_secret: bool,
    /// Where the stream is cut into reads.
    cuts: Vec<u16>,
    stream: Vec<u8>,
}

fn drive_server(input: &Input) {
    let mut server = if input.with_secret {
        let secret = Secret::new(b"a fuzzing secret of some length").unwrap();
        ServerSession::with_secret(1, "fuzz", secret, Nonce([7; 32]))
    } else {
        ServerSession::new(1, "fuzz")
    };
    let mut inbox = Vec::new();
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut ended = false;
    for cut in input.cuts.iter().copied().chain([u16::MAX]) {
        let end = (at + usize::from(cut)).min(input.stream.len());
        inbox.extend_from_slice(&input.stream[at..end]);
        at = end;
        let mut used = 0;
        loop {
            match Frame::decode(&inbox[used..]) {
                Ok(Decoded::Incomplete { needed }) => {
                    assert!(needed > 0 && needed <= FRAME_LEN_MAX);
                    break;
                }
                Ok(Decoded::Frame { frame, len }) => {
                    assert!(len <= FRAME_LEN_MAX && len >= 10);
                    used += len;
                    let before = out.len();
                    match server.handle(frame, &mut out) {
                        ServerEvent::Command { tag, command } => {
                            assert!(!ended, "a command after the end");
                            assert!(!command.word.is_empty());
                            server
                                .reply(tag, uftpd::stats::eas0::ReplyStatus::OK, "r", &mut out)
                                .unwrap();
                        }
                        ServerEvent::Closed
                        | ServerEvent::Refused { .. }
                        | ServerEvent::PeerError { .. } => ended = true,
                        ServerEvent::Ignored => assert!(ended || server.is_finished()),
                        ServerEvent::Continue | ServerEvent::LoggedIn => {}
                    }
                    // One frame in, at most one or two frames out.
                    assert!(out.len() - before <= 2 * FRAME_LEN_MAX);
                }
                Err(e) => {
                    server.refuse_frame(&e, &mut out);
                    return;
                }
            }
            if used >= inbox.len() {
                break;
            }
        }
        inbox.drain(..used);
        if at >= input.stream.len() {
            break;
        }
    }
    // What the server wrote decodes as frames.
    let mut used = 0;
    while used < out.len() {
        match Frame::decode(&out[used..]) {
            Ok(Decoded::Frame { len, .. }) => used += len,
            other => panic!("the server wrote a bad frame: {other:?}"),
        }
    }
}

fn drive_client(input: &Input) {
    let mut client = if input.with_secret {
        let secret = Secret::new(b"a fuzzing secret of some length").unwrap();
        ClientSession::with_secret(LoginInfo::new("ops"), secret, Nonce([9; 32]))
    } else {
        ClientSession::new(LoginInfo::new("ops"))
    };
    let mut out = Vec::new();
    let _ = client.login(&mut out);
    let mut used = 0;
    for _ in 0..1000 {
        match Frame::decode(&input.stream[used..]) {
            Ok(Decoded::Frame { frame, len }) => {
                used += len;
                let _ = client.handle(frame, &mut out);
                if client.is_established() {
                    let _ = client.command("report", &[], &mut out);
                }
            }
            Ok(Decoded::Incomplete { .. }) => break,
            Err(e) => {
                let _ = client.frame_error(e);
                break;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    drive_server(&input);
    drive_client(&input);
    match http::parse(&input.stream) {
        http::Parse::Request { method, path } => {
            assert!(path.starts_with('/'));
            let _ = http::route(path);
            assert!(!method.contains(' '));
        }
        http::Parse::Incomplete => assert!(input.stream.len() < http::HEAD_BYTES_MAX),
        http::Parse::Bad | http::Parse::TooLarge => {}
    }
});
