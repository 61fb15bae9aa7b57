//! What the load generators (`voxlab stun-load`, `turn-load`, `sn-load`) share: a zero-timeout
//! epoll set over their sockets, and the parser for their duration flags.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::ensure;

/// An epoll set over sockets, level-triggered, polled with a zero timeout (a generator owns its
/// core and never sleeps in the kernel).
pub(crate) struct Poller {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// Watches `socks` for reading; each is reported by its position in `socks`. At most
    /// `events` ready sockets are taken per poll.
    pub(crate) fn new(socks: impl Iterator<Item = RawFd>, events: usize) -> anyhow::Result<Poller> {
        // SAFETY: plain system call; the result is checked before use.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        ensure!(
            raw >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for (i, s) in socks.enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both descriptors are open; `ev` lives across the call.
            let rc = unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, s, &mut ev) };
            ensure!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; events.max(1)],
        })
    }

    /// Indexes of the sockets with datagrams waiting, without blocking.
    pub(crate) fn ready(&mut self) -> impl Iterator<Item = usize> + '_ {
        // SAFETY: `events` has room for `len` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                0,
            )
        };
        self.events[..n.max(0) as usize]
            .iter()
            .map(|e| e.u64 as usize)
    }
}

/// Parses a duration flag like `5s`, `500ms` or `250us` (a bare `0` too), refusing anything
/// longer than `max`.
pub(crate) fn parse_duration_at_most(s: &str, max: Duration) -> Result<Duration, String> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end]
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s, 500ms or 250us"))?;
    let scale = match &s[end..] {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "" if n == 0.0 => 0.0,
        _ => return Err(format!("'{s}': say us, ms or s")),
    };
    let d = Duration::try_from_secs_f64(n * scale).map_err(|e| format!("'{s}': {e}"))?;
    if d > max {
        return Err(format!("'{s}' is longer than {max:?}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The netem SPEC parser panicked on `delay=99999999999999999999999s`; this parser, shared
    /// by the load generators' duration flags, must refuse such a value the same way.
    #[test]
    fn overflowing_duration_is_an_error_not_a_panic() {
        let max = Duration::from_secs(3600);
        for s in ["99999999999999999999999s", "18446744073709551616s", "3601s"] {
            assert!(parse_duration_at_most(s, max).is_err(), "{s}");
        }
        assert_eq!(
            parse_duration_at_most("250ms", max),
            Ok(Duration::from_millis(250))
        );
    }
}
