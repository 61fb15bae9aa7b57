//! The outgoing datagram every core's `poll_transmit` hands its driver: one type, so a driver
//! that joins several cores on one socket (the call endpoint: client agent, phone, TURN, STUN)
//! moves their output without adapters.

use std::net::SocketAddr;

/// [`Transmit::socket`] of the client's UDP socket (the default).
pub const UDP: usize = 0;
/// [`Transmit::socket`] of a client's TCP stream to `to` (opened by the driver on first use):
/// the agent's supernode sessions when UDP is blocked, framed with a 2-byte length, and the
/// call endpoint's TURN allocation over TCP, framed as RFC 8656 §12 says (STUN messages and
/// padded ChannelData back to back).
pub const STREAM: usize = 1;

/// A datagram to send: `data` to `to`, from the driver's socket number `socket`.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Which of the driver's sockets sends it, by an index the core and its driver agree on
    /// (the NAT probe's primary and alternate sockets). Cores with one socket use 0.
    pub socket: usize,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

impl Transmit {
    /// `data` to `to` from the core's only socket.
    pub fn new(to: SocketAddr, data: Vec<u8>) -> Transmit {
        Transmit {
            socket: 0,
            to,
            data,
        }
    }
}
