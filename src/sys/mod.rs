//! The system layer: the syscalls std does not wrap, each behind a safe
//! function with its safety argument next to it. Together with
//! [`crate::uring`] this is the only place `unsafe` is allowed.
//!
//! - [`net`]: sockets, socket options, ICMP error queues, sockaddr and
//!   control-message codecs.
//! - [`fs`]: `openat2` beneath a directory, linking and renaming, file maps.
//! - [`activation`]: the sockets systemd passes (`LISTEN_FDS`).
//! - [`process`]: resource limits, capabilities, signals, the wake eventfd.

pub mod activation;
pub mod fs;
pub mod net;
pub mod process;
