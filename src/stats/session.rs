//! An eAS0 session on one TCP connection (placeholder until the codec lands).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use super::server::StatsConfig;
use super::view::History;

pub(super) fn run(
    _stream: &mut TcpStream,
    _buf: Vec<u8>,
    _peer: SocketAddr,
    _config: &StatsConfig,
    _history: &History,
    _deadline: Instant,
) -> io::Result<()> {
    Ok(())
}
