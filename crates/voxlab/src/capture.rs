//! A packet capture inside one lab namespace, for tests that check what the network sees: every
//! IP packet on every interface of the namespace, both directions, with its UDP or TCP payload.
//!
//! One `AF_PACKET` datagram socket (link headers stripped, so every packet starts at its IP
//! header) opened inside the namespace; it keeps capturing there from a background thread until
//! [`Capture::stop`]. Like `tcpdump -i any`, but in-process and with no tool to install.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::in_netns;

/// ETH_P_ALL in network byte order: every protocol.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// Biggest packet kept whole; longer ones are cut (the lab's MTU is 1500).
const SNAPLEN: usize = 65_536;

/// Transport of a captured packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

/// One captured IP packet carrying UDP or TCP.
#[derive(Clone, Debug)]
pub struct Packet {
    pub at: Instant,
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The transport payload (for TCP, this segment's bytes of the stream).
    pub payload: Vec<u8>,
}

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Capture {
    /// Starts capturing in namespace `ns`.
    pub fn start(ns: &str) -> io::Result<Capture> {
        let fd = in_netns(ns, open_socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let (flag, sink) = (stop.clone(), packets.clone());
        let thread = std::thread::spawn(move || read_until(fd, &flag, &sink));
        Ok(Capture {
            stop,
            packets,
            thread: Some(thread),
        })
    }

    /// What was captured so far (the capture goes on).
    pub fn snapshot(&self) -> Vec<Packet> {
        self.packets.lock().unwrap().clone()
    }

    /// Stops and returns what was captured, in arrival order. A packet seen on two interfaces
    /// (forwarded through the namespace) appears twice.
    pub fn stop(mut self) -> io::Result<Vec<Packet>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .map_err(|_| io::Error::other("capture thread panicked"))??;
        Ok(std::mem::take(&mut *self.packets.lock().unwrap()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            ETH_P_ALL_BE as libc::c_int,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A call's worth of packets arrives while the reader may wait for a CPU.
    let size: libc::c_int = 8 << 20;
    // SAFETY: size is a live c_int and the length is its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // Wake up periodically to see the stop flag.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: tv is a live timeval and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn read_until(fd: OwnedFd, stop: &AtomicBool, out: &Mutex<Vec<Packet>>) -> io::Result<()> {
    let mut buf = vec![0u8; SNAPLEN];
    // After the stop flag, drain what the kernel already queued (bounded).
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(Instant::now() + Duration::from_millis(200));
        }
        if drain_until.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                if drain_until.is_some() {
                    libc::MSG_DONTWAIT
                } else {
                    0
                },
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) if drain_until.is_some() => return Ok(()),
                Some(libc::EAGAIN | libc::EINTR) => continue,
                // An interface of the namespace went away (the lab tearing down).
                Some(libc::ENETDOWN) => continue,
                _ => return Err(e),
            }
        }
        if let Some(p) = parse(&buf[..n as usize]) {
            out.lock().unwrap().push(p);
        }
    }
}

/// The UDP or TCP packet in an IP packet; `None` for anything else (or a cut or bad header).
pub fn parse(ip: &[u8]) -> Option<Packet> {
    let at = Instant::now();
    let (src, dst, proto, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            if ihl < 20 || total < ihl || ip.len() < total {
                return None;
            }
            // A non-first fragment has no transport header.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip[9], &ip[ihl..total])
        }
        6 => {
            if ip.len() < 40 {
                return None;
            }
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?));
            // Extension headers are not followed: the lab sends none.
            (src, dst, ip[6], ip.get(40..40 + len)?)
        }
        _ => return None,
    };
    let (proto, header) = match proto {
        17 => (Proto::Udp, 8),
        6 => (Proto::Tcp, (*l4.get(12)? >> 4) as usize * 4),
        _ => return None,
    };
    if l4.len() < header.max(8) {
        return None;
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    Some(Packet {
        at,
        proto,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: l4[header..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_udp_over_ipv4_and_skips_fragments() {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend([0x12, 0x34, 0x0d, 0x96, 0, 12, 0, 0, b'a', b'b', b'c', b'd']);
        let pk = parse(&p).unwrap();
        assert_eq!(pk.proto, Proto::Udp);
        assert_eq!(pk.src, "10.0.0.1:4660".parse().unwrap());
        assert_eq!(pk.dst, "10.0.0.2:3478".parse().unwrap());
        assert_eq!(pk.payload, b"abcd");
        p[7] = 1; // fragment offset 8
        assert!(parse(&p).is_none());
        assert!(parse(&p[..10]).is_none());
    }
}
