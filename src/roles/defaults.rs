//! Every promotion threshold and timer, in one place. Relations: demote thresholds sit below
//! promote ones (hysteresis); `min_tenure` is far longer than `jitter`, so a node that just
//! took a role cannot be talked out of it by the next measurement; the supernode's
//! `GrantConfig::ttl` outlives a client's `grant_timeout`, so a grant is never counted as free
//! while its holder may still act on it.

use std::time::Duration;

/// A client's promotion policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `--no-relay` clears this: never take the relay role.
    pub allow_relay: bool,
    /// `--no-supernode` clears this: never take the supernode role.
    pub allow_supernode: bool,
    /// `--max-relay-kbps`: the most uplink the relay role may use. `None`: the measured spare.
    pub max_relay_kbps: Option<u32>,
    /// Relay promotion needs this much relay bandwidth (about six relayed calls).
    pub relay_promote_kbps: u32,
    /// A relay demotes below this (hysteresis: half the promotion threshold).
    pub relay_demote_kbps: u32,
    /// Supernode promotion needs this spare uplink (signalling is light; presence fan-out is not).
    pub supernode_promote_kbps: u32,
    pub supernode_demote_kbps: u32,
    /// Supernode promotion needs this CPU headroom (fraction idle, 0.0–1.0).
    pub supernode_promote_cpu: f32,
    pub supernode_demote_cpu: f32,
    /// Stable uptime (same reachable address) before the relay role: a flapping laptop is not one.
    pub relay_min_uptime: Duration,
    /// Stable uptime before the supernode role: records live there, so longer.
    pub supernode_min_uptime: Duration,
    /// A held role is kept at least this long unless the reason is hard (no oscillation).
    pub min_tenure: Duration,
    /// Upper bound of the uniform random wait before asking for a grant (no stampede).
    pub jitter: Duration,
    /// A grant request unanswered this long is given up (the supernode may have gone).
    pub grant_timeout: Duration,
    /// A new supernode's client limit grows linearly to `supernode_max_clients` over this.
    pub ramp: Duration,
    /// Clients a new supernode accepts at once, before the ramp.
    pub ramp_start_clients: u32,
    /// Clients a supernode accepts at full ramp.
    pub supernode_max_clients: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allow_relay: true,
            allow_supernode: true,
            max_relay_kbps: None,
            relay_promote_kbps: 1024,
            relay_demote_kbps: 512,
            supernode_promote_kbps: 512,
            supernode_demote_kbps: 256,
            supernode_promote_cpu: 0.5,
            supernode_demote_cpu: 0.2,
            relay_min_uptime: Duration::from_secs(5 * 60),
            supernode_min_uptime: Duration::from_secs(15 * 60),
            min_tenure: Duration::from_secs(30 * 60),
            jitter: Duration::from_secs(60),
            grant_timeout: Duration::from_secs(10),
            ramp: Duration::from_secs(10 * 60),
            ramp_start_clients: 50,
            supernode_max_clients: 2000,
        }
    }
}

impl Config {
    /// The test and operator knob `--promote-after`: both uptimes become `after`, the jitter a
    /// quarter of it and the ramp `after`; tenure stays at least ten times `after`.
    pub fn with_promote_after(mut self, after: Duration) -> Self {
        self.relay_min_uptime = after;
        self.supernode_min_uptime = after;
        self.jitter = after / 4;
        self.ramp = after;
        self.min_tenure = self.min_tenure.min(after * 10).max(after);
        self
    }
}

/// A supernode's view of how many relays and supernodes the mesh wants, and how it grants.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantConfig {
    /// The floor: every directory record has 3 homes (rendezvous hashing over supernodes), so
    /// fewer than 3 supernodes cannot hold them.
    pub supernode_floor: u32,
    /// Registered clients per supernode before another is wanted: 200 keeps supernodes at 0.5 %
    /// of clients, well under the 1 % of DESIGN §7.
    pub clients_per_supernode: u32,
    /// Relays wanted with no relayed load: each relayed call holds a primary and a standby on
    /// different relays and the caller ranks several candidates, so 4 leaves a choice after
    /// one relay's loss.
    pub relay_floor: u32,
    /// Relay bandwidth one relayed call takes (both directions in and out at ~40 kbit/s each).
    pub relayed_call_kbps: u32,
    /// Capacity assumed for a relay not yet promoted, to turn a shortfall into a count.
    pub typical_relay_kbps: u32,
    /// At most one grant per role per this interval (rate limit).
    pub interval: Duration,
    /// An outstanding grant whose holder never shows up as a relay or supernode expires after
    /// this and frees its slot.
    pub ttl: Duration,
}

impl Default for GrantConfig {
    fn default() -> Self {
        GrantConfig {
            supernode_floor: 3,
            clients_per_supernode: 200,
            relay_floor: 4,
            relayed_call_kbps: 160,
            typical_relay_kbps: 1024,
            interval: Duration::from_secs(2),
            ttl: Duration::from_secs(30),
        }
    }
}
