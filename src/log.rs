//! Log lines on stderr that can never take the server down: a write that
//! fails (the reader went away, `uftpd -v | head`) is dropped, where
//! `eprintln!` would panic the thread that logged.
//!
//! Still a plain write on the calling thread: a reader that stops reading
//! can block a shard once the pipe is full. Handing lines to a logging
//! thread through a bounded queue is the next step.

use std::io::Write;

/// Writes one line to stderr, ignoring failure.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.write_all(b"\n");
}

/// `log!("uftpd: ...")`: one line on stderr; a failed write is dropped.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
