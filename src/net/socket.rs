//! Socket set-up with `socket2`: options the defaults get wrong for a server.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer size asked for on service sockets: room for a burst of a few
/// thousand datagrams while the loop is busy. The kernel caps it at `net.core.*mem_max`.
const SERVICE_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket bound to `addr`. IPv6 sockets are IPv6-only, so an IPv4 and an
/// IPv6 service can share a port number.
pub fn bind_udp_std(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    let _ = sock.set_recv_buffer_size(SERVICE_BUFFER);
    let _ = sock.set_send_buffer_size(SERVICE_BUFFER);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// [`bind_udp_std`] registered with the current tokio runtime.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(bind_udp_std(addr)?)
}
