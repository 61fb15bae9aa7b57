//! Notice when the host's interface addresses change: a netlink socket subscribed to the kernel's
//! address add/remove notifications (rtnetlink, `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`).
//!
//! The relay refuses its own host as a peer, and an address added after start-up would otherwise
//! be a peer until the next SIGHUP. The messages themselves are not parsed: any notification
//! means "read the list again" (`getifaddrs`), which is simpler and cannot drift from the list
//! the policy started with.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A subscription to address changes in this network namespace.
pub struct AddrWatch(AsyncFd<OwnedFd>);

impl AddrWatch {
    /// Subscribes; fails where netlink is unavailable (the caller then relies on SIGHUP).
    pub fn new() -> io::Result<AddrWatch> {
        // SAFETY: plain socket(2)/bind(2) calls on a descriptor we own from here on.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
            let r = libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            fd
        };
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(AddrWatch(fd))
    }

    /// Completes once at least one address was added or removed since the last call (every
    /// queued notification is consumed, so a burst of changes wakes the caller once).
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.0.readable().await?;
            let mut any = false;
            loop {
                // SAFETY: recv(2) into a buffer we own, on our descriptor.
                let n = unsafe {
                    libc::recv(
                        self.0.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    any = true;
                    continue;
                }
                if n == 0 {
                    guard.clear_ready();
                    break;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    io::ErrorKind::Interrupted => {}
                    // ENOBUFS: notifications were lost to a full queue, so something changed.
                    _ if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                    _ => return Err(e),
                }
            }
            if any {
                return Ok(());
            }
        }
    }
}
