//! Candidates, their priorities (RFC 8445 §5.1.2, RFC 8421) and ICE credentials.

use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The kind of a candidate (RFC 8445 §5.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CandidateKind {
    /// An address of the client's own socket.
    Host,
    /// The client's address as a STUN server (the supernode) saw it.
    ServerReflexive,
    /// The client's address as the peer saw it in a connectivity check.
    PeerReflexive,
    /// An address allocated on a TURN relay.
    Relayed,
}

impl CandidateKind {
    /// Type preference, RFC 8445 §5.1.2.2's recommended values: direct before reflexive before
    /// relayed, and peer-reflexive above server-reflexive because it was learned from the peer
    /// itself.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relayed => 0,
        }
    }

    /// The short name used in events and logs (SDP's `typ`).
    pub fn name(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::Relayed => "relay",
        }
    }
}

/// A candidate as signalled to the peer. Deliberately without SDP's "related address": a
/// relayed or reflexive candidate sent to a caller who is not a contact must reveal no other
/// address of the callee (DESIGN §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub kind: CandidateKind,
    pub addr: SocketAddr,
    /// RFC 8445 §5.1.2.
    pub priority: u32,
    /// Candidates with the same foundation share a type, base IP and server (RFC 8445 §5.1.1.3).
    pub foundation: u32,
}

/// The component of every voxmesh candidate: one stream, one component (media and its
/// control are multiplexed, as RFC 5761 does for RTP/RTCP).
pub const COMPONENT: u32 = 1;

/// Priority of a candidate (RFC 8445 §5.1.2.1): type preference, local preference, component.
pub fn priority(kind: CandidateKind, local_preference: u16) -> u32 {
    (kind.type_preference() << 24) | ((local_preference as u32) << 8) | (256 - COMPONENT)
}

/// Priority of a pair (RFC 8445 §6.1.2.3), from the controlling (`g`) and controlled (`d`)
/// agents' candidate priorities.
pub fn pair_priority(g: u32, d: u32) -> u64 {
    let (g, d) = (g as u64, d as u64);
    (1 << 32) * g.min(d) + 2 * g.max(d) + u64::from(g > d)
}

/// [`pair_priority`] from one agent's point of view: both agents compute the same number for
/// the same pair, whichever role they hold.
pub fn pair_priority_for(controlling: bool, local: u32, remote: u32) -> u64 {
    if controlling {
        pair_priority(local, remote)
    } else {
        pair_priority(remote, local)
    }
}

/// Addresses RFC 8421 §4 (with RFC 6724's policy table) ranks low: link-local, IPv4-mapped,
/// 6to4, Teredo and site-local. They rarely reach a peer beyond the LAN.
fn is_poor(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6.to_ipv4_mapped().is_some()
                || s[0] == 0x2002 // 6to4
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
        }
    }
}

/// Local preference (RFC 8445 §5.1.2.1) for the `nth` (0-based) candidate of one kind and
/// address family, implementing RFC 8421's dual-stack rules: IPv6 is preferred, but IPv4 and
/// IPv6 candidates are interleaved (v6#0, v4#0, v6#1, v4#1, ...) so that a broken IPv6 path
/// costs at most one pacing slot before IPv4 is tried (RFC 8421 §4 asks for exactly this kind
/// of interleaving, rather than all of one family first). Poor addresses rank below all others.
pub fn local_preference(ip: IpAddr, nth: usize) -> u16 {
    let nth = nth.min(127) as u16;
    let family_bonus: u16 = if ip.is_ipv6() { 128 } else { 0 };
    let tier: u16 = if is_poor(ip) { 0 } else { 32768 };
    tier + (32767 - 128 - 256 * nth) + family_bonus
}

/// A stable foundation (RFC 8445 §5.1.1.3): same kind, same base IP and same server IP give
/// the same number. FNV-1a over those bytes, so it is deterministic across runs.
pub fn foundation(kind: CandidateKind, base: IpAddr, server: Option<IpAddr>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    };
    eat(kind.type_preference() as u8);
    let mut ip = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().iter().for_each(|b| eat(*b)),
        IpAddr::V6(a) => a.octets().iter().for_each(|b| eat(*b)),
    };
    ip(base);
    if let Some(s) = server {
        ip(s);
    }
    h
}

/// Short-term credentials (RFC 8445 §5.3): exchanged in signalling, used for every check.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub ufrag: String,
    pub pwd: String,
}

impl std::fmt::Debug for Credentials {
    /// The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

/// ice-char (RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/".
const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Credentials {
    /// Fresh credentials from `rng`: an 8-character ufrag (RFC 8445 §5.3 asks for at least 24
    /// bits; 48 here) and a 24-character password (at least 128 bits; 144 here).
    pub fn random(rng: &mut impl Rng) -> Credentials {
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ICE_CHARS[rng.random_range(0..ICE_CHARS.len())] as char)
                .collect()
        };
        let ufrag = pick(8);
        let pwd = pick(24);
        Credentials { ufrag, pwd }
    }

    /// Whether these are usable: ice-chars only, ufrag 4..=256 and pwd 22..=256 characters
    /// (RFC 8839 §5.4). A ufrag with ':' would break the USERNAME split.
    pub fn is_valid(&self) -> bool {
        let ok = |s: &str| s.bytes().all(|b| ICE_CHARS.contains(&b));
        (4..=256).contains(&self.ufrag.len())
            && (22..=256).contains(&self.pwd.len())
            && ok(&self.ufrag)
            && ok(&self.pwd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn priorities_follow_rfc_8445() {
        // RFC 8445 §5.1.2.1 with local preference 65535: host 2130706431.
        assert_eq!(priority(CandidateKind::Host, 65535), 2_130_706_431);
        assert_eq!(priority(CandidateKind::Relayed, 65535), 16_777_215);
        let host = priority(CandidateKind::Host, 1000);
        let prflx = priority(CandidateKind::PeerReflexive, 65535);
        let srflx = priority(CandidateKind::ServerReflexive, 65535);
        let relay = priority(CandidateKind::Relayed, 65535);
        assert!(host > prflx && prflx > srflx && srflx > relay);
    }

    #[test]
    fn both_agents_agree_on_pair_priority_and_relay_ranks_last() {
        let (a, b) = (2_130_706_431u32, 1_694_498_815u32);
        // Agent A (controlling, candidate a) and agent B (controlled, candidate b) agree.
        assert_eq!(
            pair_priority_for(true, a, b),
            pair_priority_for(false, b, a)
        );
        assert_ne!(pair_priority(a, b), pair_priority(b, a));
        let host = priority(CandidateKind::Host, 65535);
        let srflx = priority(CandidateKind::ServerReflexive, 30000);
        let relay = priority(CandidateKind::Relayed, 65535);
        // Any pair with a relayed end ranks below any direct pair.
        assert!(pair_priority(srflx, srflx) > pair_priority(host, relay));
        assert!(pair_priority(relay, host) < pair_priority(srflx, host));
    }

    #[test]
    fn dual_stack_preferences_interleave_v6_first() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let order = [
            local_preference(v6, 0),
            local_preference(v4, 0),
            local_preference(v6, 1),
            local_preference(v4, 1),
        ];
        assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:?}");
        assert!(local_preference(ll, 0) < local_preference(v4, 5));
    }

    #[test]
    fn foundations_group_by_kind_base_and_server() {
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let s: IpAddr = "198.51.100.1".parse().unwrap();
        let f = foundation(CandidateKind::ServerReflexive, a, Some(s));
        assert_eq!(f, foundation(CandidateKind::ServerReflexive, a, Some(s)));
        assert_ne!(f, foundation(CandidateKind::Host, a, None));
        assert_ne!(
            f,
            foundation(CandidateKind::ServerReflexive, a, Some(a)),
            "another server"
        );
    }

    #[test]
    fn random_credentials_are_valid_and_seeded() {
        let mut r1 = rand::rngs::StdRng::seed_from_u64(7);
        let mut r2 = rand::rngs::StdRng::seed_from_u64(7);
        let c = Credentials::random(&mut r1);
        assert!(c.is_valid());
        assert_eq!(c, Credentials::random(&mut r2));
        assert!(!format!("{c:?}").contains(&c.pwd));
        let bad = Credentials {
            ufrag: "a:b!".into(),
            pwd: c.pwd.clone(),
        };
        assert!(!bad.is_valid());
    }
}
