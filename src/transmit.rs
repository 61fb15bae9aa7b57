//! The outgoing datagram every core's `poll_transmit` hands its driver: one type, so a driver
//! that joins several cores on one socket (the call endpoint: client agent, phone, TURN, STUN)
//! moves their output without adapters.

use std::net::SocketAddr;

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
