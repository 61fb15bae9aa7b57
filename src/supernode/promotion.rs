//! The supernode's part in promotion ([`crate::roles`]): it tells clients what the mesh needs,
//! dials back to prove a client's address is public, and grants roles, at most the deficit at
//! once ([`GrantBook`]).
//!
//! Dial-back: the probe leaves from a socket the client never contacted (the driver's own
//! ephemeral socket, [`Promotion::poll_probe`]) towards the address the client's session comes
//! from. A NAT or a filtering firewall drops it; a public host gets it and echoes its nonce.
//! Only the session's own source is ever probed, so nobody can aim probes elsewhere.
//!
//! Once the mesh has a second supernode, a second probe comes from another member (asked with
//! [`crate::signal::Request::PProbe`]): the address is proved reachable from two independent
//! vantage points, not one, and the proof is both nonces XORed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::identity::UserId;
use crate::roles::rng::SplitMix;
use crate::roles::{GrantBook, GrantConfig, Need, NeedInputs, Role, need, probe};
use crate::signal::RolesAnswer;

/// A dial-back nonce stays valid this long (a client promotes within minutes of its probe or
/// probes again).
const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// At most one probe per client per this: a client cannot make us send a stream of probes.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Most outstanding nonces kept (one per client that asked; the oldest go first).
const MAX_NONCES: usize = 10_000;

pub(super) struct Promotion {
    book: GrantBook<UserId>,
    /// client -> (proof expected: the XOR of the nonces sent, when sent).
    nonces: HashMap<UserId, (u64, Instant)>,
    rng: SplitMix,
    probes: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Promotion {
    pub fn new(cfg: GrantConfig, seed: u64) -> Self {
        Promotion {
            book: GrantBook::new(cfg),
            nonces: HashMap::new(),
            rng: SplitMix::new(seed),
            probes: VecDeque::new(),
        }
    }

    pub fn need(&self, inputs: &NeedInputs) -> Need {
        need(self.book.config(), inputs)
    }

    /// `client`, whose session comes from `source`, asks for a dial-back. With `helper`
    /// (another live supernode exists), a second nonce is returned for that member to probe
    /// with ([`crate::signal::Request::PProbe`]); the proof is then both nonces XORed.
    pub fn dial_back(
        &mut self,
        now: Instant,
        client: UserId,
        source: SocketAddr,
        helper: bool,
    ) -> (RolesAnswer, Option<u64>) {
        let probes = if helper { 2 } else { 1 };
        let recent = self
            .nonces
            .get(&client)
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) < PROBE_INTERVAL);
        let mut second = None;
        if !recent {
            if self.nonces.len() >= MAX_NONCES {
                self.nonces
                    .retain(|_, (_, at)| now.saturating_duration_since(*at) < NONCE_LIFETIME);
                if self.nonces.len() >= MAX_NONCES
                    && let Some(oldest) = self.nonces.iter().min_by_key(|(_, (_, at))| *at)
                {
                    let k = *oldest.0;
                    self.nonces.remove(&k);
                }
            }
            let nonce = self.rng.next_u64();
            let mut proof = nonce;
            if helper {
                let other = self.rng.next_u64();
                proof ^= other;
                second = Some(other);
            }
            self.nonces.insert(client, (proof, now));
            self.probes.push_back((source, probe::encode(nonce)));
        }
        (
            RolesAnswer::DialBack {
                reflexive: source,
                probes,
            },
            second,
        )
    }

    /// A mesh member asks us to send its client's second dial-back probe.
    pub fn probe_for_peer(&mut self, to: SocketAddr, nonce: u64) {
        // Bounded like our own: a member cannot make us queue without end.
        if self.probes.len() < MAX_NONCES {
            self.probes.push_back((to, probe::encode(nonce)));
        }
    }

    /// `client` asks to take `role` as `id`, proving its address with `proof`.
    pub fn promote(
        &mut self,
        now: Instant,
        client: UserId,
        role: Role,
        proof: u64,
        id: UserId,
        need: Need,
    ) -> RolesAnswer {
        let proved = self.nonces.get(&client).is_some_and(|(n, at)| {
            *n == proof && now.saturating_duration_since(*at) < NONCE_LIFETIME
        });
        let granted = proved && self.book.request(now, &id, role, &need);
        RolesAnswer::Grant {
            role,
            granted,
            need,
        }
    }

    /// `id` now holds `role` here (a relay said hello, a supernode joined).
    pub fn confirmed(&mut self, id: &UserId, role: Role) {
        self.book.confirmed(id, role);
    }

    /// The next dial-back probe: send `data` to `to` from a socket no client ever contacted.
    pub fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.probes.pop_front()
    }
}
