//! Supernode membership: SWIM (the `foca` crate) carried inside the authenticated sessions, so
//! every supernode knows every other one and learns of failures in seconds (DESIGN §5).
//!
//! A member's identity is its node key (ID + Noise key) and address. The ID is the hash of the
//! member's Ed25519 key: a member cannot choose it. SWIM traffic arrives only through a session
//! whose peer proved that key, and the SWIM sender's claimed ID must be that peer's
//! ([`Mesh::handle_data`] checks, so a supernode cannot speak for another). Members learned by
//! gossip are only reachable through a session that verifies their key, so a forged member in
//! gossip can never be contacted; and the supernode core counts a member (as a home, in member
//! lists) only once it has proved its key in a session, so a forged member never homes anything.
//!
//! Fan-out is bounded whatever the size of the mesh: each probe period a member probes one
//! other (and asks [`INDIRECT_PROBES`] others to help only when that one is silent), and gossips
//! updates to [`GOSSIP_FANOUT`] random members, each update [`max_transmissions`] times, a
//! number that grows with the logarithm of the membership (and every new receiver passes it on
//! as many times: epidemic spread, about log(n) rounds). A
//! member that still missed one learns it when it is probed or announces itself. The supernode opens a session for a SWIM
//! datagram only when it sends one (see `supernode::peers`), so these bounds are also what
//! bounds its sessions.
//!
//! Sans-IO like the rest: [`Mesh::poll_send`] gives datagrams for members, [`Mesh::poll_event`]
//! membership changes, [`Mesh::poll_timeout`] the next timer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{Codec, Foca, Notification, PostcardCodec, Runtime, Timer};
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::identity::{NodeKey, UserId};

/// A supernode as SWIM knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub noise: [u8; 32],
    pub addr: SocketAddr,
    /// Bumped when the member rejoins after being declared down (SWIM's renewal).
    pub generation: u16,
}

impl Member {
    pub fn node_key(&self) -> NodeKey {
        NodeKey {
            id: self.id,
            noise: self.noise,
        }
    }
}

impl foca::Identity for Member {
    type Addr = UserId;

    fn renew(&self) -> Option<Self> {
        Some(Member {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> UserId {
        self.id
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Same node, two identities: the later generation is the live one.
        self.generation.wrapping_sub(adversary.generation) < u16::MAX / 2
    }
}

/// Timing of failure detection. Detection takes about a probe period plus the suspicion time.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            probe_period: Duration::from_millis(1000),
            probe_rtt: Duration::from_millis(300),
            suspect_to_down: Duration::from_secs(3),
        }
    }
}

/// A membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    Up(Member),
    Down(Member),
}

/// Why SWIM data was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("SWIM data from {session} claims to come from {claimed}")]
    Impostor { session: UserId, claimed: UserId },
    #[error("malformed SWIM data: {0}")]
    Malformed(String),
}

/// Members asked to probe a silent member for us.
pub const INDIRECT_PROBES: usize = 3;
/// Members each gossip round goes to (rounds run only while there are updates to spread).
pub const GOSSIP_FANOUT: usize = 3;
/// How often gossip rounds run while there are updates.
pub const GOSSIP_PERIOD: Duration = Duration::from_millis(200);

/// How many times each member piggybacks each update it holds, for a mesh of `members`:
/// memberlist's 4·log10(n+1), at least 6. With [`MAX_TRANSMISSIONS_FLOOR`] at 4 (foca's value
/// for 16 members), a simulated 60-member mesh still had members that had not heard of others
/// 40 s after joining (they learn when probed, within about n probe periods).
pub fn max_transmissions(members: usize) -> u8 {
    let tx = (4.0 * ((members + 1) as f64).log10()).ceil();
    tx.clamp(f64::from(MAX_TRANSMISSIONS_FLOOR), 255.0) as u8
}

/// The least [`max_transmissions`].
pub const MAX_TRANSMISSIONS_FLOOR: u8 = 6;

/// Largest SWIM datagram: leaves room for the session's framing inside a 1232-byte frame.
const MAX_PACKET: usize = 1100;

#[derive(Default)]
struct Outputs {
    sends: VecDeque<(Member, Vec<u8>)>,
    timers: Vec<(Duration, Timer<Member>)>,
    events: VecDeque<MeshEvent>,
}

impl Runtime<Member> for Outputs {
    fn notify(&mut self, n: Notification<'_, Member>) {
        match n {
            Notification::MemberUp(m) => self.events.push_back(MeshEvent::Up(m.clone())),
            Notification::MemberDown(m) => self.events.push_back(MeshEvent::Down(m.clone())),
            _ => {}
        }
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.sends.push_back((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// Supernode membership.
pub struct Mesh {
    me: Member,
    foca: Foca<Member, PostcardCodec, rand010::rngs::StdRng, foca::NoCustomBroadcast>,
    out: Outputs,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: HashMap<u64, Timer<Member>>,
    next_timer: u64,
    /// Live members other than us, by ID.
    live: HashMap<UserId, Member>,
    /// Grows whenever `live` changes, so users of the member list can cache what they derive.
    version: u64,
    /// foca's settings as we last gave them (foca has no getter), to retune dissemination as
    /// the mesh grows or shrinks.
    foca_config: foca::Config,
}

impl Mesh {
    pub fn new(me: Member, config: &MeshConfig, seed: u64, now: Instant) -> Mesh {
        let mut c = foca::Config::new_lan(NonZeroU32::new(16).expect("nonzero"));
        c.probe_period = config.probe_period;
        c.probe_rtt = config.probe_rtt;
        c.suspect_to_down_after = config.suspect_to_down;
        c.max_packet_size = NonZeroUsize::new(MAX_PACKET).expect("nonzero");
        c.num_indirect_probes = NonZeroUsize::new(INDIRECT_PROBES).expect("nonzero");
        c.max_transmissions = NonZeroU8::new(max_transmissions(1)).expect("nonzero");
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: GOSSIP_PERIOD,
            num_members: NonZeroUsize::new(GOSSIP_FANOUT).expect("nonzero"),
        });
        let rng = rand010::rngs::StdRng::seed_from_u64(seed);
        let mut mesh = Mesh {
            foca: Foca::new(me.clone(), c.clone(), rng, PostcardCodec),
            foca_config: c,
            me,
            out: Outputs::default(),
            timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            next_timer: 0,
            live: HashMap::new(),
            version: 0,
        };
        mesh.collect(now);
        mesh
    }

    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Asks `seed` to let us in (bootstrap or host cache entry).
    pub fn join(&mut self, now: Instant, seed: Member) {
        if seed.id != self.me.id {
            let _ = self.foca.announce(seed, &mut self.out);
            self.collect(now);
        }
    }

    /// SWIM data that arrived in a session with `session_peer`.
    pub fn handle_data(
        &mut self,
        now: Instant,
        session_peer: UserId,
        data: &[u8],
    ) -> Result<(), MeshError> {
        let header: foca::Header<Member> = PostcardCodec
            .decode_header(data)
            .map_err(|e| MeshError::Malformed(e.to_string()))?;
        if header.src.id != session_peer {
            return Err(MeshError::Impostor {
                session: session_peer,
                claimed: header.src.id,
            });
        }
        self.foca
            .handle_data(data, &mut self.out)
            .map_err(|e| MeshError::Malformed(e.to_string()))?;
        self.collect(now);
        Ok(())
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(ev) = self.timer_events.remove(&key) {
                let _ = self.foca.handle_timer(ev, &mut self.out);
            }
        }
        self.collect(now);
    }

    /// A datagram for a member.
    #[must_use]
    pub fn poll_send(&mut self) -> Option<(Member, Vec<u8>)> {
        self.out.sends.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.out.events.pop_front()
    }

    /// Live members, us included, sorted by ID.
    pub fn member_ids(&self) -> Vec<UserId> {
        let mut v: Vec<UserId> = self.live.keys().copied().chain([self.me.id]).collect();
        v.sort();
        v
    }

    /// Changes whenever the live members (or their addresses) do.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn member(&self, id: &UserId) -> Option<&Member> {
        if *id == self.me.id {
            Some(&self.me)
        } else {
            self.live.get(id)
        }
    }

    /// Live members other than us.
    pub fn others(&self) -> impl Iterator<Item = &Member> {
        self.live.values()
    }

    pub fn is_member(&self, id: &UserId) -> bool {
        *id == self.me.id || self.live.contains_key(id)
    }

    /// Announces our departure (graceful shutdown).
    pub fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.out);
        self.collect(now);
    }

    /// Moves foca's timer requests into our heap and tracks membership.
    fn collect(&mut self, now: Instant) {
        for (after, ev) in self.out.timers.drain(..) {
            let key = self.next_timer;
            self.next_timer += 1;
            self.timer_events.insert(key, ev);
            self.timers.push(Reverse((now + after, key)));
        }
        for ev in &self.out.events {
            match ev {
                MeshEvent::Up(m) if m.id != self.me.id => {
                    self.live.insert(m.id, m.clone());
                    self.version += 1;
                }
                MeshEvent::Down(m)
                    if self
                        .live
                        .get(&m.id)
                        .is_some_and(|l| l.generation == m.generation) =>
                {
                    self.live.remove(&m.id);
                    self.version += 1;
                }
                _ => {}
            }
        }
        let tx = max_transmissions(self.live.len() + 1);
        if tx != self.foca_config.max_transmissions.get() {
            let mut c = self.foca_config.clone();
            c.max_transmissions = NonZeroU8::new(tx).expect("at least the floor");
            if self.foca.set_config(c.clone()).is_ok() {
                self.foca_config = c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8) -> Member {
        Member {
            id: UserId([n; 20]),
            noise: [n; 32],
            addr: SocketAddr::from(([127, 0, 0, n], 4000)),
            generation: 0,
        }
    }

    /// Runs a set of meshes against each other on a simulated clock (no loss).
    fn run(meshes: &mut [Mesh], dead: &[UserId], until: Instant, mut now: Instant) -> Instant {
        loop {
            // Deliver everything.
            let mut moved = true;
            while moved {
                moved = false;
                for i in 0..meshes.len() {
                    while let Some((to, data)) = meshes[i].poll_send() {
                        moved = true;
                        let from = meshes[i].me.id;
                        if dead.contains(&to.id) || dead.contains(&from) {
                            continue;
                        }
                        if let Some(j) = meshes.iter().position(|m| m.me.id == to.id) {
                            meshes[j].handle_data(now, from, &data).unwrap();
                        }
                    }
                }
            }
            let next = meshes
                .iter()
                .enumerate()
                .filter(|(_, m)| !dead.contains(&m.me.id))
                .filter_map(|(i, m)| m.poll_timeout().map(|t| (t, i)))
                .min();
            match next {
                Some((t, i)) if t <= until => {
                    now = t;
                    meshes[i].handle_timeout(now);
                }
                _ => return until,
            }
        }
    }

    #[test]
    fn five_members_converge_and_detect_a_failure_in_seconds() {
        let t0 = Instant::now();
        let mut meshes: Vec<Mesh> = (1..=5)
            .map(|n| Mesh::new(member(n), &MeshConfig::default(), n as u64, t0))
            .collect();
        for m in meshes.iter_mut().skip(1) {
            m.join(t0, member(1));
        }
        let now = run(&mut meshes, &[], t0 + Duration::from_secs(5), t0);
        for m in &meshes {
            assert_eq!(
                m.member_ids().len(),
                5,
                "{} sees {:?}",
                m.me.id,
                m.member_ids().len()
            );
        }
        let dead = [member(3).id];
        let later = run(&mut meshes, &dead, now + Duration::from_secs(8), now);
        for m in meshes.iter().filter(|m| m.me.id != dead[0]) {
            assert!(
                !m.is_member(&dead[0]),
                "{} still thinks 3 is alive",
                m.me.id
            );
            assert_eq!(m.member_ids().len(), 4);
        }
        let _ = later;
    }

    #[test]
    fn dissemination_grows_with_the_log_of_the_mesh() {
        assert_eq!(max_transmissions(1), 6);
        assert_eq!(max_transmissions(60), 8);
        assert_eq!(max_transmissions(1000), 13);
    }

    #[test]
    fn impostors_are_refused() {
        let t0 = Instant::now();
        let mut a = Mesh::new(member(1), &MeshConfig::default(), 1, t0);
        let mut b = Mesh::new(member(2), &MeshConfig::default(), 2, t0);
        b.join(t0, member(1));
        let (_, data) = b.poll_send().unwrap();
        let err = a.handle_data(t0, member(9).id, &data).unwrap_err();
        assert!(matches!(err, MeshError::Impostor { .. }));
        assert!(matches!(
            a.handle_data(t0, member(2).id, &[1, 2, 3]),
            Err(MeshError::Malformed(_))
        ));
        a.handle_data(t0, member(2).id, &data).unwrap();
    }
}
