//! uftpd: a TFTP server for PXE/netboot farms on per-core io_uring shards.
//!
//! # Architecture
//!
//! ```text
//!   main ──> config ──> shard × N (one thread and one ring each)
//!                          │
//!              ┌───────────┼─────────────────┐
//!              v           v                 v
//!           proto        cache             uring ──> sys
//!        (sans-I/O)   (files, maps,    (ring, buffers,   (syscalls)
//!                      uploads)         sends, files)
//! ```
//!
//! - [`proto`]: the protocol as pure code — bytes and a clock in, packets
//!   and deadlines out. The wire codec, option negotiation, the sender and
//!   receiver state machines, one [`server`](proto::server) and one
//!   [`client`](proto::client) session built from them, the
//!   [sessions table](proto::sessions::Sessions) and the
//!   [admission policy](proto::endpoint::Endpoint). The simulation tests
//!   drive it on a virtual clock.
//! - [`shard`]: one thread's event loop. It moves bytes and time between
//!   the ring and `proto`, and decides nothing itself. The packet path is
//!   described in its module documentation.
//! - [`uring`]: the io_uring layer — ring, provided-buffer rings, send pool,
//!   fixed files — behind a safe API whose owner accounting guarantees that
//!   nothing is closed or freed while the kernel may still use it.
//! - [`cache`]: path resolution beneath the root, the shared file-map
//!   cache, upload staging. Knows nothing of TFTP.
//! - [`sys`]: the syscalls std does not wrap (sockets, `openat2`, limits,
//!   signals).
//! - [`stats`]: per-shard counters, written by one shard, read by anyone.
//! - [`remap`]: tftpd-hpa's remap rules, pure code; the shards apply them
//!   to each request's name before [`cache`] resolves it.
//! - [`config`]: the command line and every limit.
//!
//! `unsafe` is denied everywhere but [`uring`] and [`sys`], each `unsafe`
//! block there carrying its safety argument, and one `unsafe impl` in
//! [`cache::filemap`] (a file map promises the ring its bytes stay put);
//! [`proto`] forbids it.

#![deny(unsafe_code)]

pub mod cache;
pub mod config;
pub mod log;
pub mod proto;
pub mod remap;
pub mod shard;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod uring;
