//! The sans-I/O protocol core: bytes and a clock in, packets and deadlines
//! out. Nothing here touches sockets, files, threads or the OS clock, and
//! nothing here is `unsafe`.
//!
//! - [`wire`]: packet views and encoders; [`refusal`]: why a request is refused.
//! - [`options`]: option negotiation.
//! - [`block`], [`netascii`]: block-number arithmetic, line-end conversion.
//! - [`transfer`], [`sender`], [`receiver`]: the transfer state machines.
//! - [`server`], [`client`]: one transfer from either end.
//! - [`sessions`], [`endpoint`], [`budget`]: a shard's table of sessions,
//!   the policy that admits, refuses or routes each datagram on the service
//!   port, and the rate and byte budgets it keeps per source.

#![forbid(unsafe_code)]

pub mod block;
pub mod budget;
pub mod client;
pub mod endpoint;
pub mod netascii;
pub mod options;
pub mod receiver;
pub mod refusal;
pub mod sender;
pub mod server;
pub mod sessions;
pub mod transfer;
pub mod wire;
