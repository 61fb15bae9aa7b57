//! Which peers a relay may send to.
//!
//! A relay is a packet cannon anyone with credentials can aim, so by default it refuses every
//! address in the IANA IPv4 and IPv6 Special-Purpose Address Registries (private networks,
//! loopback, link-local, documentation, benchmarking, translation prefixes, ...) and multicast.
//! The table is built from IANA's own CSV files (`data/`), so updating it is a file copy, plus
//! the deprecated site-local `fec0::/10`, which IANA no longer lists. `--allow-peer CIDR`
//! opens blocks (the lab needs 198.51.100.0/24 and 2001:db8::/32); a block with host bits set
//! is refused at start-up ([`parse_allow_peer`]).
//!
//! Three rules no allow-list can override:
//! - multicast and broadcast are never peers (with multicast loopback a group address reaches
//!   the relay host's own services);
//! - an IPv6 address that embeds an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//!   `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64 in `64:ff9b::/96` and
//!   `64:ff9b:1::/48`, 6to4, Teredo's client and server) is decided as that IPv4 address: it is
//!   refused whenever the IPv4 address would be, so `::ffff:0:127.0.0.1` and `64:ff9b::7f00:1`
//!   stay loopback. The translation prefixes that are registry blocks (NAT64, 6to4, Teredo)
//!   must in addition be opened by `--allow-peer`;
//! - the relay host itself is never a peer: loopback, and the host's own addresses, whatever the
//!   port — its listening and metrics ports and whatever else runs there. The one exception, a
//!   live relayed address of this same relay (two callers on one relay), is handled by the server
//!   core, which delivers such packets internally instead of sending them to itself. The host's
//!   addresses are read at start-up and again on SIGHUP ([`local_addresses`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

pub use ipnet::IpNet;

/// Why an `--allow-peer` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowPeerError {
    /// Not an address or an address block at all.
    #[error("'{0}' is not an address block like 198.51.100.0/24 or 2001:db8::/32")]
    NotABlock(String),
    /// Bits set beyond the prefix length. Refused rather than normalised: `10.1.2.3/8` may mean
    /// the network 10.0.0.0/8 or the one host 10.1.2.3, and guessing wrong either opens far
    /// more of the network to the relay than meant (a security decision) or silently opens
    /// less; an error at start-up costs the operator one edit and names both readings.
    #[error(
        "'{given}' has host bits set: write {network} for the whole block, or {host} for the one address"
    )]
    HostBits {
        given: String,
        network: IpNet,
        host: IpNet,
    },
}

/// Parses an `--allow-peer` value: a block `ADDR/LEN` with no host bits set, or a bare address
/// (a block of one).
pub fn parse_allow_peer(s: &str) -> Result<IpNet, AllowPeerError> {
    let t = s.trim();
    let net: IpNet = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(AllowPeerError::NotABlock(s.to_string())),
        },
    };
    if net.trunc() != net {
        return Err(AllowPeerError::HostBits {
            given: s.to_string(),
            network: net.trunc(),
            host: IpNet::from(net.addr()),
        });
    }
    Ok(net)
}

/// One registry entry.
#[derive(Clone, Debug)]
pub struct SpecialBlock {
    pub block: IpNet,
    pub name: String,
}

const IPV4_REGISTRY: &str = include_str!("../../data/iana-ipv4-special-registry.csv");
const IPV6_REGISTRY: &str = include_str!("../../data/iana-ipv6-special-registry.csv");

/// Blocks refused beside the registries: no longer special-purpose, so IANA's registry dropped
/// them, yet still never a legitimate peer.
const EXTRA_BLOCKS: &[(&str, &str)] = &[
    // Site-local unicast, deprecated by RFC 3879 but still routed inside some networks as if it
    // were private space (RFC 4291 §2.5.7 keeps the prefix reserved).
    ("fec0::/10", "Site-Local (deprecated, RFC 3879)"),
];

/// Every block of both registries (parsed once from the embedded CSV files), then
/// the extra blocks this module adds (`EXTRA_BLOCKS`).
pub fn special_purpose_blocks() -> &'static [SpecialBlock] {
    static TABLE: OnceLock<Vec<SpecialBlock>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut out = Vec::new();
        for csv in [IPV4_REGISTRY, IPV6_REGISTRY] {
            for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
                let (block, rest) = line.split_once(',').expect("registry rows have columns");
                let name = csv_field(rest);
                let block = block.parse().expect("registry blocks are CIDRs");
                out.push(SpecialBlock { block, name });
            }
        }
        for (block, name) in EXTRA_BLOCKS {
            out.push(SpecialBlock {
                block: block.parse().expect("extra blocks are CIDRs"),
                name: name.to_string(),
            });
        }
        out
    })
}

/// The first field of a CSV remainder, unquoted (`"""This network"""` -> `"This network"`).
fn csv_field(s: &str) -> String {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    out.push('"');
                    chars.next();
                }
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        s.split(',').next().unwrap_or("").to_string()
    }
}

/// The most specific registry block holding `ip`, if any.
pub fn special_block(ip: IpAddr) -> Option<&'static SpecialBlock> {
    special_purpose_blocks()
        .iter()
        .filter(|b| b.block.contains(&ip))
        .max_by_key(|b| b.block.prefix_len())
}

/// IPv4 addresses carried inside an IPv6 address by the transition mechanisms: IPv4-mapped,
/// IPv4-compatible, IPv4-translated (SIIT), NAT64 (both well-known prefixes), 6to4 and Teredo
/// (server and client).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let seg = ip.segments();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Ipv4Addr::new(a, b, c, d);
    let mut out = Vec::new();
    if let Some(m) = ip.to_ipv4_mapped() {
        out.push(m);
    } else if seg[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        // IPv4-compatible ::a.b.c.d (deprecated, RFC 4291 §2.5.5.1).
        out.push(v4(o[12], o[13], o[14], o[15]));
    } else if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated ::ffff:0:a.b.c.d (SIIT, RFC 2765 §2.1): outside both registries, so
        // only the IPv4 address inside can refuse it.
        out.push(v4(o[12], o[13], o[14], o[15]));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(v4(o[12], o[13], o[14], o[15])); // NAT64 /96 (RFC 6052 §2.2)
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        out.push(v4(o[6], o[7], o[9], o[10])); // NAT64 /48: bits 64..71 are the u octet
    }
    if seg[0] == 0x2002 {
        out.push(v4(o[2], o[3], o[4], o[5])); // 6to4 (RFC 3056)
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo (RFC 4380): the server's address, then the client's, stored inverted.
        out.push(v4(o[4], o[5], o[6], o[7]));
        out.push(v4(!o[12], !o[13], !o[14], !o[15]));
    }
    out
}

/// Why a peer is refused (each maps to a 403 and a counter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// In a special-purpose registry block (named) and not allowed.
    SpecialPurpose(String),
    /// Multicast or broadcast.
    Multicast,
    /// The relay host itself: loopback or one of its own addresses.
    OwnHost,
    /// An IPv6 address whose embedded IPv4 address is refused.
    Embedded(Ipv4Addr, Box<Refusal>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::SpecialPurpose(n) => write!(f, "special-purpose address ({n})"),
            Refusal::Multicast => write!(f, "multicast or broadcast address"),
            Refusal::OwnHost => write!(f, "the relay's own host"),
            Refusal::Embedded(v4, why) => write!(f, "embeds {v4}: {why}"),
        }
    }
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::SpecialPurpose(_) => "special_purpose",
            Refusal::Multicast => "multicast",
            Refusal::OwnHost => "own_host",
            Refusal::Embedded(_, inner) => inner.label(),
        }
    }
}

/// The relay's peer policy.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Blocks opened with `--allow-peer` (see [`parse_allow_peer`]).
    pub allow: Vec<IpNet>,
    /// The host's own addresses (all interfaces), besides loopback.
    pub own: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Whether packets may go to `peer` (the server core has already dealt with the relay's own
    /// live relayed addresses).
    pub fn check(&self, peer: SocketAddr) -> Result<(), Refusal> {
        self.check_ip(canonical(peer.ip()))
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        if ip.is_loopback() || ip.is_unspecified() || self.own.contains(&ip) {
            return Err(Refusal::OwnHost);
        }
        if let IpAddr::V6(v6) = ip {
            for v4 in embedded_ipv4(v6) {
                self.check_ip(IpAddr::V4(v4))
                    .map_err(|why| Refusal::Embedded(v4, Box::new(why)))?;
            }
        }
        // Multicast and broadcast are never peers, whatever --allow-peer says: with multicast
        // loopback on (the default), a packet to 224.0.0.1 reaches every UDP service on the
        // relay host bound to the wildcard address, the relay's own listener included.
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(Refusal::Multicast);
        }
        if self.allow.iter().any(|c| c.contains(&ip)) {
            return Ok(());
        }
        match special_block(ip) {
            Some(b) => Err(Refusal::SpecialPurpose(b.name.clone())),
            None => Ok(()),
        }
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses on the wire of a dual-stack socket.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses of every local interface (`getifaddrs`), for [`PeerPolicy::own`].
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as libc::c_int {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> PeerPolicy {
        PeerPolicy {
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            own: vec!["203.0.114.7".parse().unwrap()],
        }
    }

    fn sa(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    #[test]
    fn both_registries_load_completely() {
        let blocks = special_purpose_blocks();
        let v4 = blocks.iter().filter(|b| b.block.addr().is_ipv4()).count();
        let v6 = blocks.len() - v4;
        assert_eq!(
            (v4, v6),
            (25, 25 + 1),
            "every registry row becomes a block, and site-local"
        );
        assert!(blocks.iter().any(|b| b.name == "\"This network\""));
    }

    /// Every registry block is refused at its first and last address, and allowed once
    /// `--allow-peer` names it (unless it is the host itself or embeds a refused IPv4 address).
    #[test]
    fn every_registry_block_is_refused_by_default() {
        let p = policy(&[]);
        for b in special_purpose_blocks() {
            for ip in [first(b.block), last(b.block)] {
                assert!(
                    p.check(SocketAddr::new(ip, 1)).is_err(),
                    "{} ({}) at {ip}",
                    b.block,
                    b.name
                );
            }
        }
    }

    fn first(c: IpNet) -> IpAddr {
        c.network()
    }

    fn last(c: IpNet) -> IpAddr {
        c.broadcast()
    }

    #[test]
    fn policy_table() {
        let lab = policy(&["198.51.100.0/24", "2001:db8::/32"]);
        let open = policy(&["0.0.0.0/0", "::/0"]);
        let cases: &[(&str, &PeerPolicy, &str, bool)] = &[
            ("public v4", &lab, "8.8.8.8", true),
            ("public v6", &lab, "2a00:1450::1", true),
            ("lab v4 allowed", &lab, "198.51.100.20", true),
            ("lab v6 allowed", &lab, "2001:db8::a:1", true),
            ("other documentation block", &lab, "203.0.113.5", false),
            ("private", &lab, "10.1.2.3", false),
            ("CGN", &lab, "100.64.0.1", false),
            ("link-local", &lab, "169.254.1.1", false),
            ("loopback", &lab, "127.0.0.1", false),
            ("loopback even if allowed", &open, "127.0.0.1", false),
            ("v6 loopback even if allowed", &open, "::1", false),
            ("own address even if allowed", &open, "203.0.114.7", false),
            ("multicast", &lab, "224.0.0.1", false),
            ("multicast even if allowed", &open, "224.0.0.1", false),
            ("v6 multicast even if allowed", &open, "ff0e::1", false),
            ("NAT64 multicast, allowed", &open, "64:ff9b::e000:1", false),
            ("broadcast", &lab, "255.255.255.255", false),
            ("v4-mapped loopback", &open, "::ffff:127.0.0.1", false),
            ("v4-mapped private", &lab, "::ffff:10.0.0.1", false),
            ("v4-mapped lab", &lab, "::ffff:198.51.100.3", true),
            ("v4-compatible loopback", &open, "::127.0.0.1", false),
            ("v4-compatible private", &lab, "::10.0.0.1", false),
            ("v4-compatible public", &lab, "::8.8.8.8", true),
            ("SIIT loopback", &open, "::ffff:0:127.0.0.1", false),
            ("SIIT private", &lab, "::ffff:0:10.0.0.1", false),
            ("SIIT own address", &open, "::ffff:0:203.0.114.7", false),
            ("SIIT lab, as its IPv4", &lab, "::ffff:0:198.51.100.3", true),
            ("SIIT public", &lab, "::ffff:0:8.8.8.8", true),
            ("site-local", &lab, "fec0::1", false),
            (
                "site-local, last",
                &lab,
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                false,
            ),
            (
                "site-local, allowed",
                &policy(&["fec0::/10"]),
                "fec0::1",
                true,
            ),
            ("just past site-local", &lab, "ff00::1", false),
            ("NAT64 loopback", &open, "64:ff9b::7f00:1", false),
            (
                "NAT64 public (prefix refused)",
                &lab,
                "64:ff9b::808:808",
                false,
            ),
            (
                "NAT64 public, prefix allowed",
                &policy(&["64:ff9b::/96"]),
                "64:ff9b::808:808",
                true,
            ),
            (
                "NAT64 private, prefix allowed",
                &policy(&["64:ff9b::/96"]),
                "64:ff9b::a00:1",
                false,
            ),
            (
                "local NAT64 /48 loopback",
                &open,
                "64:ff9b:1:7f00:0:100::",
                false,
            ),
            (
                "6to4 private",
                &policy(&["2002::/16"]),
                "2002:a00:1::1",
                false,
            ),
            (
                "6to4 public, allowed",
                &policy(&["2002::/16"]),
                "2002:808:808::1",
                true,
            ),
            (
                "Teredo client loopback",
                &policy(&["2001::/32"]),
                "2001:0:808:808::80ff:fffe",
                false,
            ),
            (
                "Teredo public, allowed",
                &policy(&["2001::/32"]),
                "2001:0:808:808::f7f7:f7f7",
                true,
            ),
            (
                "NAT64 own address",
                &policy(&["64:ff9b::/96"]),
                "64:ff9b::cb00:7207",
                false,
            ),
            (
                "local NAT64 /48 private, prefix allowed",
                &policy(&["64:ff9b:1::/48"]),
                "64:ff9b:1:a00:0:100::",
                false,
            ),
            (
                "local NAT64 /48 public, prefix allowed",
                &policy(&["64:ff9b:1::/48"]),
                "64:ff9b:1:808:8:800::",
                true,
            ),
            (
                "6to4 loopback",
                &policy(&["2002::/16"]),
                "2002:7f00:1::1",
                false,
            ),
            (
                "Teredo client private",
                &policy(&["2001::/32"]),
                "2001:0:808:808::f5ff:fffe",
                false,
            ),
            (
                "Teredo server private",
                &policy(&["2001::/32"]),
                "2001:0:a00:1::f7f7:f7f7",
                false,
            ),
            ("ULA", &lab, "fd00::1", false),
            ("v6 link-local", &lab, "fe80::1", false),
            ("v6 multicast", &lab, "ff02::1", false),
            ("SRv6", &lab, "5f00::1", false),
            ("3fff docs", &lab, "3fff::1", false),
        ];
        for (name, p, ip, want) in cases {
            let got = p.check(sa(ip));
            assert_eq!(got.is_ok(), *want, "{name}: {ip} -> {got:?}");
        }
    }

    #[test]
    fn embedded_addresses_are_extracted() {
        let e = |s: &str| embedded_ipv4(s.parse().unwrap());
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(e("::ffff:1.2.3.4"), vec![ip("1.2.3.4")]);
        assert_eq!(e("64:ff9b::102:304"), vec![ip("1.2.3.4")]);
        assert_eq!(e("64:ff9b:1:102:3:400::"), vec![ip("1.2.3.4")]);
        assert_eq!(e("2002:102:304::1"), vec![ip("1.2.3.4")]);
        assert_eq!(
            e("2001:0:102:304::fefd:fcfb"),
            vec![ip("1.2.3.4"), ip("1.2.3.4")]
        );
        assert_eq!(e("::1.2.3.4"), vec![ip("1.2.3.4")]);
        assert_eq!(e("::ffff:0:1.2.3.4"), vec![ip("1.2.3.4")]);
        assert!(e("::ffff:1:1.2.3.4").is_empty(), "not a translated form");
        assert!(e("::1").is_empty() && e("::").is_empty() && e("2a00::1").is_empty());
    }

    #[test]
    fn allow_peer_blocks_parse_and_host_bits_are_refused() {
        let ok = |s: &str| parse_allow_peer(s).unwrap().to_string();
        assert_eq!(ok("198.51.100.0/24"), "198.51.100.0/24");
        assert_eq!(ok("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(
            ok(" 10.0.0.1 "),
            "10.0.0.1/32",
            "a bare address is a block of one"
        );
        assert_eq!(ok("fe80::1"), "fe80::1/128");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        let c = parse_allow_peer("10.128.0.0/9").unwrap();
        assert!(c.contains(&"10.200.1.1".parse::<IpAddr>().unwrap()));
        assert!(!c.contains(&"10.1.1.1".parse::<IpAddr>().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "nonsense/8",
            "10.0.0.0/",
            "::/129",
            "",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(
                parse_allow_peer(bad),
                Err(AllowPeerError::NotABlock(bad.to_string())),
                "{bad:?}"
            );
        }
        // Host bits set: refused, and the message offers both readings.
        let e = parse_allow_peer("10.1.2.3/8").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'10.1.2.3/8' has host bits set: write 10.0.0.0/8 for the whole block, or \
             10.1.2.3/32 for the one address"
        );
        assert!(matches!(
            parse_allow_peer("2001:db8::1/32"),
            Err(AllowPeerError::HostBits { .. })
        ));
        assert!(matches!(
            parse_allow_peer("198.51.100.1/24"),
            Err(AllowPeerError::HostBits { .. })
        ));
    }
}
