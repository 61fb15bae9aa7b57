//! The supernode's side of promotion: how many of each role the mesh wants, and the grants that
//! let that many (and no more) eligible clients take a role.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{GrantConfig, Role};

/// What a supernode knows when it computes the need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeedInputs {
    /// Clients registered across the mesh (this supernode's count times the live supernodes is
    /// a fair estimate: rendezvous hashing spreads them).
    pub registered_clients: u32,
    /// Live supernodes, this one included.
    pub supernodes: u32,
    /// Registered relays.
    pub relays: u32,
    /// Their advertised capacity, summed.
    pub relay_capacity_kbps: u64,
    /// Calls relayed right now.
    pub relayed_calls: u32,
}

/// How many relays and supernodes the mesh wants and has: what [`super::Promoter`] reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub relays_wanted: u32,
    pub relays_have: u32,
    pub supernodes_wanted: u32,
    pub supernodes_have: u32,
}

impl Need {
    /// How many more of `role` the mesh wants.
    pub fn deficit(&self, role: Role) -> u32 {
        match role {
            Role::Relay => self.relays_wanted.saturating_sub(self.relays_have),
            Role::Supernode => self.supernodes_wanted.saturating_sub(self.supernodes_have),
        }
    }

    fn wanted_have(&self, role: Role) -> (u32, u32) {
        match role {
            Role::Relay => (self.relays_wanted, self.relays_have),
            Role::Supernode => (self.supernodes_wanted, self.supernodes_have),
        }
    }
}

/// Supernodes wanted: `max(floor, ceil(clients / clients_per_supernode))`, the floor (3) giving
/// every record its 3 homes. Relays wanted: the floor, or more when the relays' capacity is
/// under twice the relayed load (headroom for the standby allocations and for growth).
pub fn need(cfg: &GrantConfig, inputs: &NeedInputs) -> Need {
    let per = cfg.clients_per_supernode.max(1);
    let supernodes_wanted = cfg
        .supernode_floor
        .max(inputs.registered_clients.div_ceil(per));
    let load = 2 * u64::from(inputs.relayed_calls) * u64::from(cfg.relayed_call_kbps);
    let shortfall = load.saturating_sub(inputs.relay_capacity_kbps);
    let extra = shortfall.div_ceil(u64::from(cfg.typical_relay_kbps.max(1)));
    let by_load = u64::from(inputs.relays) + extra;
    let relays_wanted = u64::from(cfg.relay_floor).max(if extra > 0 { by_load } else { 0 });
    Need {
        relays_wanted: u32::try_from(relays_wanted).unwrap_or(u32::MAX),
        relays_have: inputs.relays,
        supernodes_wanted,
        supernodes_have: inputs.supernodes,
    }
}

/// Outstanding grants: at most the deficit at once, at most one per role per interval. `K`
/// names a client (a user ID in the supernode, an index in a simulator).
#[derive(Debug)]
pub struct GrantBook<K> {
    cfg: GrantConfig,
    /// (holder, role, expiry): granted, not yet seen holding the role.
    outstanding: Vec<(K, Role, Instant)>,
    /// When the last grant per role was handed out (index: relay 0, supernode 1).
    last: [Option<Instant>; 2],
}

impl<K: Eq + Clone> GrantBook<K> {
    pub fn new(cfg: GrantConfig) -> Self {
        GrantBook {
            cfg,
            outstanding: Vec::new(),
            last: [None, None],
        }
    }

    /// The configuration this book grants by.
    pub fn config(&self) -> &GrantConfig {
        &self.cfg
    }

    /// Should `who` take `role`, given the mesh's `need`? Idempotent: a client repeating its
    /// request (a lost answer) gets the same grant back.
    #[must_use]
    pub fn request(&mut self, now: Instant, who: &K, role: Role, need: &Need) -> bool {
        self.outstanding.retain(|(_, _, expiry)| *expiry > now);
        if self
            .outstanding
            .iter()
            .any(|(k, r, _)| k == who && *r == role)
        {
            return true;
        }
        let slot = usize::from(role == Role::Supernode);
        if let Some(last) = self.last[slot]
            && now.saturating_duration_since(last) < self.cfg.interval
        {
            return false;
        }
        let (wanted, have) = need.wanted_have(role);
        let pending = self.outstanding(role);
        if have + pending >= wanted {
            return false;
        }
        self.outstanding
            .push((who.clone(), role, now + self.cfg.ttl));
        self.last[slot] = Some(now);
        true
    }

    /// `who` now holds `role` (registered as a relay, joined the mesh): it counts in the need's
    /// `have` from here on, not as outstanding.
    pub fn confirmed(&mut self, who: &K, role: Role) {
        self.outstanding
            .retain(|(k, r, _)| !(k == who && *r == role));
    }

    /// Grants of `role` handed out and not yet confirmed or expired.
    pub fn outstanding(&self, role: Role) -> u32 {
        let n = self
            .outstanding
            .iter()
            .filter(|(_, r, _)| *r == role)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}
