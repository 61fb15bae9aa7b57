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

/// A non-blocking TCP listener on `addr` (SO_REUSEADDR, as every server wants: a restart is
/// not refused by the last run's connections in TIME_WAIT; IPv6 only on IPv6 addresses, so an
/// IPv4 listener on the same port can coexist).
pub fn bind_tcp_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Tries at a port number free for both UDP and TCP when the kernel picks it (port 0): the
/// kernel picks a free UDP port, and the same TCP port is taken by something else only rarely
/// (each try fails with about the share of ports in use).
pub const SAME_PORT_ATTEMPTS: u32 = 16;

/// Which half of a UDP+TCP pair could not be bound.
#[derive(Debug)]
pub enum SamePortError<E> {
    /// The UDP side (its own error type: one socket, or a whole service).
    Udp(E),
    /// The TCP listener on `addr`.
    Tcp { addr: SocketAddr, source: io::Error },
}

/// Binds a UDP side with `udp`, then with `tcp` the TCP listeners on the port numbers it got
/// (relayd and supernoded serve both on one number). When the kernel picked the numbers
/// (`picked`: port 0) and one is taken for TCP, both are released and another is tried, up
/// to `attempts` times; a fixed port has nothing else to try. Rejected UDP sides stay bound
/// until the end, so the kernel cannot hand the same number out again. The binders are
/// parameters so tests can make ports busy on demand.
pub fn bind_same_port<U, T, E>(
    picked: bool,
    attempts: u32,
    mut udp: impl FnMut() -> Result<U, E>,
    mut tcp: impl FnMut(&U) -> Result<T, (SocketAddr, io::Error)>,
) -> Result<(U, T), SamePortError<E>> {
    let attempts = attempts.max(1);
    let mut rejected = Vec::new();
    loop {
        let u = udp().map_err(SamePortError::Udp)?;
        match tcp(&u) {
            Ok(t) => return Ok((u, t)),
            Err((addr, e)) if picked && e.kind() == io::ErrorKind::AddrInUse => {
                rejected.push(u);
                if rejected.len() as u32 >= attempts {
                    let source = io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "no port free for both UDP and TCP in {attempts} tries (last: {e})"
                        ),
                    );
                    return Err(SamePortError::Tcp { addr, source });
                }
            }
            Err((addr, source)) => return Err(SamePortError::Tcp { addr, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> io::Error {
        io::Error::from(io::ErrorKind::AddrInUse)
    }

    fn tcp_on_udp_port(u: &std::net::UdpSocket) -> (SocketAddr, io::Result<()>) {
        (u.local_addr().unwrap(), Ok(()))
    }

    /// Port 0: when the port UDP got is taken for TCP, another is tried, and the pair that
    /// comes back shares one port number.
    #[test]
    fn port_zero_retries_until_udp_and_tcp_share_a_port() {
        let mut refused = Vec::new();
        let (udp, tcp) = bind_same_port(
            true,
            SAME_PORT_ATTEMPTS,
            || bind_udp_std("127.0.0.1:0".parse().unwrap()),
            |u| {
                let (a, _) = tcp_on_udp_port(u);
                if refused.len() < 3 {
                    refused.push(a.port());
                    return Err((a, busy()));
                }
                bind_tcp_std(a).map_err(|e| (a, e))
            },
        )
        .unwrap();
        let port = udp.local_addr().unwrap().port();
        assert_eq!(tcp.local_addr().unwrap().port(), port);
        refused.push(port);
        refused.sort();
        refused.dedup();
        assert_eq!(refused.len(), 4, "a different port each time: {refused:?}");
    }

    #[test]
    fn port_zero_gives_up_after_a_bounded_number_of_tries() {
        let mut tries = 0;
        let e = bind_same_port(
            true,
            5,
            || bind_udp_std("127.0.0.1:0".parse().unwrap()),
            |u| -> Result<(), _> {
                tries += 1;
                Err((tcp_on_udp_port(u).0, busy()))
            },
        )
        .unwrap_err();
        assert_eq!(tries, 5);
        let SamePortError::Tcp { source, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        assert!(source.to_string().contains("in 5 tries"), "{source}");
    }

    /// A fixed port has no alternative: a TCP conflict is reported at once, a real one here.
    #[test]
    fn a_fixed_port_taken_for_tcp_fails_at_once() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let mut tries = 0;
        let e = bind_same_port(
            false,
            SAME_PORT_ATTEMPTS,
            || bind_udp_std(addr),
            |_| {
                tries += 1;
                bind_tcp_std(addr).map_err(|e| (addr, e))
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, SamePortError::Tcp { addr: a, source } if *a == addr && source.kind() == io::ErrorKind::AddrInUse),
            "{e:?}"
        );
        assert_eq!(tries, 1);
    }
}
