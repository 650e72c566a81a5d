//! uftpd: a TFTP server for PXE/netboot farms on per-core io_uring shards.

pub mod cache;
pub mod config;
pub mod proto;
pub mod shard;
pub mod stats;
