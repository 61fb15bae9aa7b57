//! The discrete-event network every simulated test runs on: one clock, one event queue, hosts
//! behind the NAT model, links impaired by the lab's seeded [`Impairer`](crate::netem::Impairer),
//! the real STUN and TURN server cores on the internet, a log of every datagram sent, and
//! injection from any address.
//!
//! ```text
//!  host 0  10.0.1.2  --LAN-- NAT 203.0.113.1 ==access link 0==+
//!  host 1  10.0.2.2  --LAN-- NAT 203.0.113.2 ==access link 1==+== internet: STUN, TURN, paths
//!  host 2  198.51.100.7 (public: untranslated) ===============+
//! ```
//!
//! A datagram from host 0 to host 1 crosses host 0's NAT and uplink, the internet path between
//! the two (clean unless the world impairs paths), host 1's downlink and NAT. So "25 ms per NAT
//! link" gives a 100 ms round trip between two NATed hosts and 50 ms to a server; a world of
//! public hosts (session endpoints, supernodes) puts its latency and loss on the internet paths
//! instead, per direction and per pair if it likes.
//!
//! The world knows nothing of the programs on the hosts: a test (or a thin layer in
//! `tests/support`: natprobe's `Sim`, the ICE calls, session endpoints, the mesh, media pairs)
//! sends datagrams with [`World::send`] and receives what [`World::deliver_due`] hands back,
//! driving its own state machines in between, and asks [`World::next_event`] when something
//! happens next. Time is simulated (a base `Instant` plus an offset that jumps from event to
//! event: a minute of protocol costs microseconds). Every random choice comes from the world's
//! seed: the NATs' ports from its `StdRng`, each link's impairment from its own stream derived
//! from the seed and the link's name, and events run in (time, insertion) order, so a seed
//! replays the same run.
//!
//! The promotion issue's large simulation grows from here; it is in the lab crate so that it is
//! never part of the product.

mod link;
mod nat;
pub mod pop;
mod world;

pub use link::{Crossing, FRAMING, Link, LinkStats, Path};
pub use nat::{Filtering, Mapping, Nat, NatConfig, NatDrops, Outbound};
pub use world::{
    Datagram, Delivery, Fate, Host, LAN_DELAY, Relay, Sent, StunBehaviour, StunServer, World,
    WorldStats,
};

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::netem::Spec;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Runs the world until nothing is in flight; every delivery, with its arrival time.
    fn drain(w: &mut World) -> Vec<(Duration, Delivery)> {
        let mut got = Vec::new();
        while let Some(t) = w.next_event() {
            w.advance_to(t);
            for d in w.deliver_due() {
                got.push((w.elapsed(), d));
            }
        }
        got
    }

    /// Two hosts behind port-restricted cone NATs: A's first packet finds no mapping at B's NAT;
    /// once B has sent to A's mapped address, both directions pass, with the access links' delays.
    #[test]
    fn hole_punching_through_two_nats() {
        let nat = NatConfig::nat(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
        );
        let ms = Duration::from_millis;
        let mut w = World::new(1);
        let a = w.add_host(nat, ip("10.0.1.2"), ip("203.0.113.1"), Path::clean(ms(10)));
        let b = w.add_host(nat, ip("10.0.2.2"), ip("203.0.113.2"), Path::clean(ms(15)));
        let (la, lb) = (sa("10.0.1.2:5000"), sa("10.0.2.2:6000"));
        // Port preservation: the mapped addresses keep the ports.
        let (ma, mb) = (sa("203.0.113.1:5000"), sa("203.0.113.2:6000"));
        w.send(a, la, mb, b"a1".to_vec());
        assert!(
            drain(&mut w).is_empty(),
            "B's NAT has no mapping for it yet"
        );
        assert_eq!(w.hosts[b].nat.drops.no_binding, 1);
        let t0 = w.elapsed();
        w.send(b, lb, ma, b"b1".to_vec());
        let got = drain(&mut w);
        assert_eq!(got.len(), 1);
        let (at, d) = &got[0];
        assert_eq!((d.host, d.to, d.from, &d.data[..]), (a, la, mb, &b"b1"[..]));
        // B's uplink, A's downlink, and the hop from A's NAT to A.
        assert_eq!(*at - t0, ms(25) + LAN_DELAY);
        w.send(a, la, mb, b"a2".to_vec());
        let got = drain(&mut w);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.from, ma);
        let fates: Vec<Fate> = w.sent.iter().map(|s| s.fate).collect();
        assert_eq!(
            fates,
            [Fate::DroppedByNat, Fate::Delivered, Fate::Delivered]
        );
    }

    /// A symmetric NAT gives every destination its own mapping, seen by the STUN server.
    #[test]
    fn symmetric_nat_maps_per_destination_and_stun_reports_it() {
        let nat = NatConfig::nat(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        );
        let mut w = World::new(2);
        let h = w.add_host(nat, ip("10.0.1.2"), ip("203.0.113.1"), Path::default());
        w.add_stun(sa("198.51.100.1:3478"));
        w.add_stun(sa("198.51.100.2:3478"));
        let local = sa("10.0.1.2:5000");
        for server in ["198.51.100.1:3478", "198.51.100.2:3478"] {
            // A minimal STUN binding request (RFC 5389 header, no attributes).
            let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
            req.extend_from_slice(&[7; 12]);
            w.send(h, local, sa(server), req);
        }
        let got = drain(&mut w);
        assert_eq!(got.len(), 2, "both servers answered");
        let nat = &w.hosts[h].nat;
        let m1 = nat.first_mapping(local, sa("198.51.100.1:3478")).unwrap();
        let m2 = nat.first_mapping(local, sa("198.51.100.2:3478")).unwrap();
        assert_ne!(m1.port(), m2.port());
        assert_eq!(m1.ip(), ip("203.0.113.1"));
    }

    /// Internet paths: per-pair impairment, cuts, forced losses, duplicates; datagrams to
    /// nowhere land in the sink; the same seed replays the same run.
    #[test]
    fn paths_sink_and_replay() {
        let run = |seed: u64| {
            let mut w = World::new(seed);
            w.set_internet(Spec {
                delay: Duration::from_millis(20),
                loss: 0.3,
                duplicate: 0.2,
                ..Spec::default()
            });
            let a = w.add_public(ip("198.51.100.7"));
            let b = w.add_public(ip("198.51.100.8"));
            let (sa_, sb) = (sa("198.51.100.7:1"), sa("198.51.100.8:1"));
            for i in 0..200u32 {
                w.send(a, sa_, sb, i.to_be_bytes().to_vec());
            }
            let got = drain(&mut w);
            assert!(
                got.iter()
                    .all(|(t, d)| *t == Duration::from_millis(20) && d.host == b)
            );
            let stats = w.path(sa_, sb).stats;
            assert_eq!(got.len() as u64, 200 - stats.lost + stats.duplicated);
            assert!((30..90).contains(&stats.lost), "{stats:?}");
            assert!(stats.duplicated > 10, "{stats:?}");
            w.path(sb, sa_).lose_next = 2;
            for _ in 0..3 {
                w.send(b, sb, sa_, vec![1]);
            }
            let back = drain(&mut w).len() as u64;
            assert!(back <= 2 && w.path(sb, sa_).stats.lost >= 2);
            w.path(sa_, sb).cut = true;
            w.send(a, sa_, sb, vec![2]);
            assert!(drain(&mut w).is_empty());
            w.inject(sa("192.0.2.66:4444"), sa("192.0.2.99:1"), vec![3]);
            drain(&mut w);
            assert_eq!(w.sink.len(), 1);
            assert_eq!(w.sent.last().unwrap().fate, Fate::Unroutable);
            w.sent.iter().map(|s| s.fate).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6), "another seed, other losses");
    }
}
