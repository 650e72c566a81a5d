//! The sans-I/O protocol core: bytes and a clock in, packets and deadlines
//! out. Nothing here touches sockets, files, threads or the OS clock.
//!
//! - [`wire`]: packet views and encoders.
//! - [`options`]: option negotiation.
//! - [`block`], [`netascii`]: block-number arithmetic, line-end conversion.
//! - [`transfer`], [`sender`], [`receiver`]: the transfer state machines.
//! - [`server`], [`client`]: one transfer from either end.

pub mod block;
pub mod client;
pub mod netascii;
pub mod options;
pub mod receiver;
pub mod sender;
pub mod server;
pub mod transfer;
pub mod wire;
