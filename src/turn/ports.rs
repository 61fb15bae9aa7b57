//! Relayed-port bookkeeping: which ports of the range are ours, EVEN-PORT choices, and
//! RESERVATION-TOKEN holds (RFC 8656 §7.2: the odd port next to an even one, kept 30 s for the
//! client's RTCP allocation).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// How long a reserved port waits for its RESERVATION-TOKEN.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// How long a port another process held is skipped.
const BUSY_BACKOFF: Duration = Duration::from_secs(60);
/// Bound on remembered busy ports.
const MAX_BUSY: usize = 4096;

#[derive(Debug)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    /// Ports our allocations hold or reserve.
    used: HashSet<SocketAddr>,
    /// token -> (reserved address, expiry)
    reservations: HashMap<u64, (SocketAddr, Instant)>,
    /// Ports another process held when we tried them.
    busy: HashMap<SocketAddr, Instant>,
    cursor: u16,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>, seed: u16) -> PortPool {
        let span = range.end() - range.start() + 1;
        let cursor = range.start() + seed % span;
        PortPool {
            range,
            used: HashSet::new(),
            reservations: HashMap::new(),
            busy: HashMap::new(),
            cursor,
        }
    }

    /// A free port on `ip`: even (and with its odd neighbour free too, when `pair`) if asked.
    /// Starts from a moving cursor so consecutive allocations spread over the range.
    pub fn pick(&mut self, now: Instant, ip: IpAddr, even: bool, pair: bool) -> Option<SocketAddr> {
        self.busy.retain(|_, until| *until > now);
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let span = (hi - lo) as u32 + 1;
        for i in 0..span {
            let port = lo + ((self.cursor - lo) as u32 + i).rem_euclid(span) as u16;
            if even && port % 2 != 0 {
                continue;
            }
            let a = SocketAddr::new(ip, port);
            if !self.free(a) {
                continue;
            }
            if pair && (port == hi || !self.free(SocketAddr::new(ip, port + 1))) {
                continue;
            }
            self.cursor = if port == hi { lo } else { port + 1 };
            return Some(a);
        }
        None
    }

    fn free(&self, a: SocketAddr) -> bool {
        !self.used.contains(&a) && !self.busy.contains_key(&a)
    }

    /// Marks `a` as held by one of our allocations.
    pub fn take(&mut self, a: SocketAddr) {
        self.used.insert(a);
    }

    pub fn release(&mut self, a: SocketAddr) {
        self.used.remove(&a);
    }

    /// Another process holds `a`: skip it for a while.
    pub fn mark_busy(&mut self, now: Instant, a: SocketAddr) {
        if self.busy.len() < MAX_BUSY {
            self.busy.insert(a, now + BUSY_BACKOFF);
        }
    }

    /// Holds `a` for a later allocation presenting the returned token.
    pub fn reserve(&mut self, now: Instant, a: SocketAddr, token: u64) {
        self.used.insert(a);
        self.reservations
            .insert(token, (a, now + RESERVATION_LIFETIME));
    }

    /// Redeems a reservation token (the port stays marked used: the caller takes it).
    pub fn redeem(&mut self, now: Instant, token: u64) -> Option<SocketAddr> {
        match self.reservations.remove(&token) {
            Some((a, until)) if until > now => Some(a),
            Some((a, _)) => {
                self.used.remove(&a);
                None
            }
            None => None,
        }
    }

    /// Drops expired reservations; returns the earliest remaining expiry.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        let used = &mut self.used;
        self.reservations.retain(|_, (a, until)| {
            let keep = *until > now;
            if !keep {
                used.remove(a);
            }
            keep
        });
        self.reservations.values().map(|(_, t)| *t).min()
    }

    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_pairs_and_reservations() {
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let mut p = PortPool::new(50000..=50009, 3);
        let a = p.pick(t0, ip, true, true).unwrap();
        assert_eq!(a.port() % 2, 0);
        p.take(a);
        let next = SocketAddr::new(ip, a.port() + 1);
        p.reserve(t0, next, 42);
        let b = p.pick(t0, ip, false, false).unwrap();
        assert!(b != a && b != next, "taken and reserved ports are skipped");
        assert_eq!(p.redeem(t0, 41), None);
        assert_eq!(p.redeem(t0 + Duration::from_secs(1), 42), Some(next));
        p.reserve(t0, next, 43);
        assert_eq!(p.expire(t0 + Duration::from_secs(31)), None);
        assert_eq!(
            p.redeem(t0 + Duration::from_secs(31), 43),
            None,
            "reservations expire"
        );
        assert!(p.free(next));
    }

    #[test]
    fn exhaustion_and_busy_ports() {
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let mut p = PortPool::new(40000..=40001, 0);
        let a = p.pick(t0, ip, false, false).unwrap();
        p.take(a);
        let b = p.pick(t0, ip, false, false).unwrap();
        p.mark_busy(t0, b);
        assert_eq!(
            p.pick(t0, ip, false, false),
            None,
            "everything used or busy"
        );
        assert_eq!(
            p.pick(t0 + Duration::from_secs(61), ip, false, false),
            Some(b),
            "busy expires"
        );
        p.release(a);
        assert!(
            p.pick(t0 + Duration::from_secs(61), ip, true, false)
                .is_some()
        );
    }
}
