//! The NAT model (RFC 4787 terms) every simulated host sits behind.
//!
//! - mapping: endpoint-independent (optionally port-preserving), address-dependent or
//!   address-and-port-dependent, the last two with random external ports;
//! - filtering: endpoint-independent, address-dependent with the state kept per mapping (RFC 4787)
//!   or per box (one packet to an IP from any mapping lets that IP in to every mapping), or
//!   address-and-port-dependent;
//! - binding lifetime, refreshed by outbound packets and optionally by accepted inbound ones (as
//!   Linux conntrack does); filter state expires with the same lifetime;
//! - hairpinning: a packet to the NAT's own address is turned around to the mapping it names, with
//!   the sender's mapped address as its source, and is not filtered (like the lab's nft rules);
//! - "public" (no NAT, no filter), "firewall" (no translation, address-and-port-dependent
//!   filtering) and "blocked" (all UDP dropped). A host without translation delivers packets to its
//!   own address locally, so it always "hairpins".
//!
//! Not modelled: port exhaustion, ICMP, bursty (correlated) loss. Times are offsets from the
//! simulation's start; random ports come from the world's seeded RNG.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    /// Address-dependent, state per mapping (RFC 4787 §5).
    AddressPerMapping,
    /// Address-dependent, state per box: an IP any mapping has sent to may reach every mapping.
    AddressPerBox,
    AddressAndPortDependent,
}

/// The box between the client and the internet.
#[derive(Clone, Copy, Debug)]
pub struct NatConfig {
    /// Translate addresses at all (false: public host or firewall, the host owns the WAN address).
    pub translate: bool,
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// An endpoint-independent or first mapping keeps the internal port when it is free.
    pub port_preservation: bool,
    pub hairpin: bool,
    /// Idle time after which a binding (and its filter state) is gone.
    pub lifetime: Duration,
    /// Accepted inbound packets refresh the binding too (Linux conntrack), not only outbound.
    pub refresh_inbound: bool,
    /// Drop all UDP.
    pub blocked: bool,
}

impl NatConfig {
    pub fn nat(mapping: Mapping, filtering: Filtering) -> Self {
        NatConfig {
            translate: true,
            mapping,
            filtering,
            port_preservation: mapping == Mapping::EndpointIndependent,
            hairpin: false,
            lifetime: Duration::from_secs(120),
            refresh_inbound: true,
            blocked: false,
        }
    }

    pub fn public() -> Self {
        NatConfig {
            translate: false,
            ..Self::nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        }
    }

    pub fn firewall() -> Self {
        NatConfig {
            translate: false,
            ..Self::nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )
        }
    }

    pub fn blocked() -> Self {
        NatConfig {
            blocked: true,
            ..Self::nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )
        }
    }

    pub fn hairpin(self, hairpin: bool) -> Self {
        NatConfig { hairpin, ..self }
    }

    pub fn port_preservation(self, port_preservation: bool) -> Self {
        NatConfig {
            port_preservation,
            ..self
        }
    }

    pub fn lifetime(self, lifetime: Duration) -> Self {
        NatConfig { lifetime, ..self }
    }

    pub fn refresh_inbound(self, refresh_inbound: bool) -> Self {
        NatConfig {
            refresh_inbound,
            ..self
        }
    }
}

/// One binding: an internal endpoint, what else keys it (by the mapping behaviour), its external
/// port, and the filter state kept with it.
#[derive(Clone, Debug)]
struct Binding {
    internal: SocketAddr,
    /// `None` (endpoint-independent), the remote IP with port 0, or the remote endpoint.
    key: Option<SocketAddr>,
    port: u16,
    expires: Duration,
    /// Remote endpoints this binding has sent to, and until when they may answer.
    permits: Vec<(SocketAddr, Duration)>,
}

/// What the NAT did with an outbound packet.
pub enum Outbound {
    Drop,
    /// Out on the WAN, with this source.
    Wan(SocketAddr),
    /// Turned around (hairpin, or a host sending to itself): deliver to `to`, from `from`.
    Lan {
        to: SocketAddr,
        from: SocketAddr,
    },
}

/// Why the NAT dropped an inbound packet (for statistics and test diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatDrops {
    pub blocked: u64,
    pub no_binding: u64,
    pub filtered: u64,
    pub hairpin_off: u64,
}

#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    /// The box's WAN address (the client's own when it does not translate).
    wan: IpAddr,
    bindings: Vec<Binding>,
    /// Per-box address-dependent filter state: remote IP -> expiry.
    box_permits: BTreeMap<IpAddr, Duration>,
    /// Every binding ever allocated, in order: internal endpoint, key, external address.
    pub history: Vec<(SocketAddr, Option<SocketAddr>, SocketAddr)>,
    pub drops: NatDrops,
}

impl Nat {
    /// A NAT (or untranslated host) whose WAN address is `wan`, for worlds with several boxes.
    pub fn with_wan(config: NatConfig, wan: IpAddr) -> Self {
        Nat {
            config,
            wan,
            bindings: Vec::new(),
            box_permits: BTreeMap::new(),
            history: Vec::new(),
            drops: NatDrops::default(),
        }
    }

    /// The external address first given to `internal` for packets to `remote`.
    pub fn first_mapping(&self, internal: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        let key = self.key(remote);
        self.history
            .iter()
            .find(|(i, k, _)| *i == internal && *k == key)
            .map(|(_, _, e)| *e)
    }

    fn expire(&mut self, now: Duration) {
        self.bindings.retain(|b| b.expires > now);
        for b in &mut self.bindings {
            b.permits.retain(|(_, t)| *t > now);
        }
        self.box_permits.retain(|_, t| *t > now);
    }

    fn key(&self, remote: SocketAddr) -> Option<SocketAddr> {
        match self.config.mapping {
            Mapping::EndpointIndependent => None,
            Mapping::AddressDependent => Some(SocketAddr::new(remote.ip(), 0)),
            Mapping::AddressAndPortDependent => Some(remote),
        }
    }

    /// Finds or creates the binding for `internal` -> `remote`, refreshes it, and returns its
    /// index.
    fn bind(
        &mut self,
        now: Duration,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut StdRng,
    ) -> usize {
        let key = self.key(remote);
        let expires = now + self.config.lifetime;
        if let Some(i) = self
            .bindings
            .iter()
            .position(|b| b.internal == internal && b.key == key)
        {
            self.bindings[i].expires = expires;
            return i;
        }
        let in_use = |p: u16, bs: &[Binding]| bs.iter().any(|b| b.port == p);
        // Untranslated hosts "map" to themselves; port preservation keeps a free internal port.
        let keep = !self.config.translate
            || (self.config.port_preservation && !in_use(internal.port(), &self.bindings));
        let port = if keep {
            internal.port()
        } else {
            loop {
                let p = rng.random_range(1024..=65535u16);
                // Never the internal port by chance: "not preserved" stays a fact of the config.
                if p != internal.port() && !in_use(p, &self.bindings) {
                    break p;
                }
            }
        };
        self.history
            .push((internal, key, SocketAddr::new(self.wan, port)));
        self.bindings.push(Binding {
            internal,
            key,
            port,
            expires,
            permits: Vec::new(),
        });
        self.bindings.len() - 1
    }

    /// The box's WAN address.
    pub fn wan(&self) -> IpAddr {
        self.wan
    }

    pub fn config(&self) -> NatConfig {
        self.config
    }

    pub fn outbound(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        rng: &mut StdRng,
    ) -> Outbound {
        if self.config.blocked {
            self.drops.blocked += 1;
            return Outbound::Drop;
        }
        self.expire(now);
        if dst.ip() == self.wan {
            if !self.config.translate {
                // A host sending to its own address: the kernel loops it back.
                return Outbound::Lan { to: dst, from: src };
            }
            if !self.config.hairpin {
                self.drops.hairpin_off += 1;
                return Outbound::Drop;
            }
            let Some(target) = self.bindings.iter().find(|b| b.port == dst.port()) else {
                self.drops.no_binding += 1;
                return Outbound::Drop;
            };
            let to = target.internal;
            let i = self.bind(now, src, dst, rng);
            let from = SocketAddr::new(self.wan, self.bindings[i].port);
            return Outbound::Lan { to, from };
        }
        let i = self.bind(now, src, dst, rng);
        if self.config.filtering == Filtering::EndpointIndependent {
            // Nothing reads the filter state of a box that filters nothing (`inbound` lets
            // every packet to a binding in), and a public supernode would otherwise keep and
            // scan a permit per client and peer on every packet it sends.
            return Outbound::Wan(SocketAddr::new(self.wan, self.bindings[i].port));
        }
        let expires = now + self.config.lifetime;
        let b = &mut self.bindings[i];
        match b.permits.iter_mut().find(|(r, _)| *r == dst) {
            Some((_, t)) => *t = expires,
            None => b.permits.push((dst, expires)),
        }
        self.box_permits.insert(dst.ip(), expires);
        Outbound::Wan(SocketAddr::new(self.wan, b.port))
    }

    /// The internal endpoint an inbound packet from `src` to `dst` reaches, if any.
    pub fn inbound(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        if self.config.blocked {
            self.drops.blocked += 1;
            return None;
        }
        let c = self.config;
        if !c.translate && c.filtering == Filtering::EndpointIndependent {
            return Some(dst); // a public host: every packet reaches it
        }
        self.expire(now);
        let Some(i) = self.bindings.iter().position(|b| b.port == dst.port()) else {
            self.drops.no_binding += 1;
            return None;
        };
        let b = &self.bindings[i];
        let allowed = match c.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressPerMapping => b.permits.iter().any(|(r, _)| r.ip() == src.ip()),
            Filtering::AddressPerBox => self.box_permits.contains_key(&src.ip()),
            Filtering::AddressAndPortDependent => b.permits.iter().any(|(r, _)| *r == src),
        };
        if !allowed {
            self.drops.filtered += 1;
            return None;
        }
        let b = &mut self.bindings[i];
        if c.refresh_inbound {
            let expires = now + c.lifetime;
            b.expires = expires;
            for (r, t) in &mut b.permits {
                if r.ip() == src.ip()
                    && (c.filtering != Filtering::AddressAndPortDependent || *r == src)
                {
                    *t = expires;
                }
            }
            if let Some(t) = self.box_permits.get_mut(&src.ip()) {
                *t = expires;
            }
        }
        Some(b.internal)
    }
}
