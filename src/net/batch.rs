//! Batched UDP I/O: `recvmmsg`/`sendmmsg` on a tokio socket.
//!
//! One system call per batch instead of one per datagram is what makes a busy UDP service cheap:
//! under load the syscall and wakeup cost dominates the per-packet work of a STUN or TURN server.
//! When traffic is light a batch holds one datagram and this costs the same as `recv_from`.
//! Buffers are allocated once per batch object and reused.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams moved per system call.
pub const BATCH: usize = 32;
/// Largest datagram we accept. Bigger ones arrive truncated and are reported as such; STUN
/// PADDING at a typical MTU fits.
pub const MAX_DATAGRAM: usize = 2048;

/// Receive side: [`BATCH`] buffers and their sources.
pub struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    from: [Option<SocketAddr>; BATCH],
    n: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: Box::new([[0; MAX_DATAGRAM]; BATCH]),
            lens: [0; BATCH],
            truncated: [false; BATCH],
            from: [None; BATCH],
            n: 0,
        }
    }
}

/// One received datagram.
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// The datagram was longer than [`MAX_DATAGRAM`]; `data` is its head.
    pub truncated: bool,
}

impl RecvBatch {
    /// Datagrams from the last receive.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        (0..self.n).filter_map(|i| {
            Some(Datagram {
                data: &self.bufs[i][..self.lens[i]],
                from: self.from[i]?,
                truncated: self.truncated[i],
            })
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Receives up to [`BATCH`] datagrams without blocking (`WouldBlock` when none wait).
    pub fn try_recv(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    /// On a blocking socket: waits for one datagram, then takes whatever else is queued, up to
    /// [`BATCH`] (`recvmmsg` with `MSG_WAITFORONE`). `WouldBlock` once the socket's receive
    /// timeout (`SO_RCVTIMEO`) passes with nothing received. One system call per batch and no
    /// readiness polling: the cheapest way to wait on a single socket from its own thread.
    pub fn recv_wait(&mut self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    fn recv_flags(&mut self, fd: &impl AsRawFd, flags: libc::c_int) -> io::Result<usize> {
        let mut names: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::zeroed() }; BATCH];
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = MAX_DATAGRAM;
            hdrs[i].msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer refers to live, correctly sized buffers owned by this frame or by
        // `self`; the kernel writes at most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &hdrs[i];
            self.lens[i] = (h.msg_len as usize).min(MAX_DATAGRAM);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: the kernel initialised the storage (or left it zeroed, which decodes
            // to `None`).
            let storage = unsafe { names[i].assume_init_ref() };
            self.from[i] = sockaddr_to_std(storage);
        }
        self.n = n;
        Ok(n)
    }

    /// Waits until datagrams arrive and receives a batch.
    pub async fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        loop {
            sock.readable().await?;
            match sock.try_io(Interest::READABLE, || self.try_recv(sock)) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Decodes a kernel socket address (IPv4 or IPv6).
pub(crate) fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a `sockaddr_in`.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a `sockaddr_in6`.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Send side: up to [`BATCH`] datagrams queued, then sent with one `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    to: Vec<SockAddr>,
    n: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            bufs: (0..BATCH)
                .map(|_| Vec::with_capacity(MAX_DATAGRAM))
                .collect(),
            to: (0..BATCH)
                .map(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))))
                .collect(),
            n: 0,
        }
    }
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Dropped because the socket's send buffer was full (UDP: better dropped than blocking
    /// the receive loop) or the kernel refused them (e.g. no route).
    pub dropped: usize,
}

impl SendBatch {
    /// The next free buffer, cleared; fill it and call [`SendBatch::commit`]. `None` when full:
    /// flush first.
    pub fn slot(&mut self) -> Option<&mut Vec<u8>> {
        let b = self.bufs.get_mut(self.n)?;
        b.clear();
        Some(b)
    }

    /// Queues the buffer last returned by [`SendBatch::slot`] for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        self.to[self.n] = SockAddr::from(to);
        self.n += 1;
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn is_full(&self) -> bool {
        self.n == BATCH
    }

    /// Sends everything queued without blocking, then empties the batch.
    pub fn flush(&mut self, fd: &impl AsRawFd) -> Flushed {
        let mut done = Flushed::default();
        let mut start = 0;
        while start < self.n {
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let count = self.n - start;
            for i in 0..count {
                let b = &self.bufs[start + i];
                iovs[i].iov_base = b.as_ptr() as *mut _;
                iovs[i].iov_len = b.len();
                hdrs[i].msg_hdr.msg_name = self.to[start + i].as_ptr() as *mut _;
                hdrs[i].msg_hdr.msg_namelen = self.to[start + i].len();
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: pointers refer to live buffers and addresses owned by `self` or this frame.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                done.sent += r as usize;
                start += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if err.kind() == io::ErrorKind::WouldBlock {
                done.dropped += self.n - start;
                break;
            }
            // The first datagram was refused (e.g. EHOSTUNREACH, EACCES); skip it, keep going.
            done.dropped += 1;
            start += 1;
        }
        self.n = 0;
        done
    }
}
