//! A deterministic, seeded mutation fuzzer for the signalling layer: the supernode core and the
//! client agent, fed malformed content from authenticated peers.
//!
//! Seeds are valid messages of every kind: every [`Request`], [`Response`] and [`Message`]
//! variant, with real signed records inside (registrations, name claims, directory entries),
//! and real SWIM datagrams. Each case takes a seed and applies one to four mutations (bit flips,
//! interesting bytes, truncation, extension, insertion, deletion, splices from other seeds, a new
//! variant tag or version byte, a 4 GiB length prefix, a duplicated range, filling up to the
//! largest body a frame carries), or mutates what is *inside* a valid message instead (the signed
//! record of a registration, claim or entry; the SWIM datagram of a `Swim` message), then sends
//! it inside an authenticated session (the session layer fuzzes its own frames in
//! `tests/fuzz/session_fuzz.rs`), by one of these routes:
//!
//! - a request from a client session to a supernode, or from a member session (a supernode
//!   with a key of its own that joined the mesh, so its P* requests are served);
//! - a message from either session;
//! - a response to the supernode: a lookup whose first home is the member makes the supernode
//!   fetch from it, and the member answers with the mutated response;
//! - to an agent whose supernode is the attacker: a message, a request, or the response to the
//!   agent's lookup, claim, route or relay request.
//!
//! For every case:
//! - nothing panics;
//! - a request is answered (exactly one response); a message or response the receiver cannot
//!   use is counted under a reason (the supernodes' `counters.refused`, the agent's
//!   `counters().refused`); an error answer was counted where it was decided; what is neither
//!   counted nor answered with an error must be a message the receiver accepts from that sender;
//! - every 2,000 cases and at the end: the honest client is still registered and found, the
//!   fuzzed agent is registered, and the supernodes' tables are within bounds; at the end fresh
//!   clients register and look each other up.
//!
//! `VOXMESH_FUZZ_CASES` sets the number of cases (default 5,000: a few seconds in a debug
//! build), `VOXMESH_FUZZ_SEED` the seed, `VOXMESH_FUZZ_REPORT` a file for the JSON summary
//! (`scripts/fuzz-signal` runs a million cases in release).

use crate::env_u64;
use crate::support::mesh as mesh_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Duration;

use mesh_support::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use voxmesh::client::AgentEvent;
use voxmesh::directory::{name_homes, user_homes};
use voxmesh::identity::{NodeKey, UserId};
use voxmesh::mesh::{Member, Mesh, MeshConfig};
use voxmesh::session::SessionId;
use voxmesh::signal::{self, Message, NodeInfo, RelayOffer, Request, Response, Target};

const DEFAULT_CASES: u64 = 5_000;
const DEFAULT_SEED: u64 = 0x5167_a1f0_0022;
const HEALTH_EVERY: u64 = 2_000;
/// Seeds' records live as long as the policy allows, so a million cases (hours of simulated
/// time) still reach the signature check rather than the expiry check.
const RECORD_LIFE: u64 = 29 * 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Route {
    ClientRequest,
    MemberRequest,
    ClientMessage,
    MemberMessage,
    ResponseToSupernode,
    AgentMessage,
    AgentRequest,
    AgentResponse,
}

impl Route {
    const ALL: [Route; 8] = [
        Route::ClientRequest,
        Route::MemberRequest,
        Route::ClientMessage,
        Route::MemberMessage,
        Route::ResponseToSupernode,
        Route::AgentMessage,
        Route::AgentRequest,
        Route::AgentResponse,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::ClientRequest => "request_from_client",
            Route::MemberRequest => "request_from_member",
            Route::ClientMessage => "message_from_client",
            Route::MemberMessage => "message_from_member",
            Route::ResponseToSupernode => "response_to_supernode",
            Route::AgentMessage => "message_to_agent",
            Route::AgentRequest => "request_to_agent",
            Route::AgentResponse => "response_to_agent",
        }
    }
}

/// Valid messages of every kind.
struct Seeds {
    requests: Vec<Request>,
    responses: Vec<Response>,
    messages: Vec<Message>,
}

impl Seeds {
    fn encoded(&self) -> Vec<Vec<u8>> {
        let r = self.requests.iter().map(signal::encode);
        let s = self.responses.iter().map(signal::encode);
        let m = self.messages.iter().map(signal::encode);
        r.chain(s).chain(m).collect()
    }
}

/// The world under fuzz.
struct Fuzz {
    w: World,
    sns: Vec<(NodeKey, SocketAddr)>,
    honest: usize,
    honest_id: UserId,
    checker: usize,
    /// An attacker with a client session to supernode 0.
    client: usize,
    client_s: SessionId,
    /// An attacker that joined the mesh, with a session to supernode 0.
    member: usize,
    member_s: SessionId,
    /// A user and a name whose first home is the member: lookups of them reach it.
    via_member_user: UserId,
    via_member_name: String,
    /// The attacker the fuzzed agent takes for its supernode, and the agent.
    fake_sn: usize,
    agent: usize,
    agent_s: SessionId,
    seeds: Seeds,
    encoded: Vec<Vec<u8>>,
    max_body: usize,
}

#[derive(Default)]
struct Tally {
    cases: u64,
    routes: BTreeMap<&'static str, u64>,
    verdicts: BTreeMap<String, u64>,
    structured: u64,
    unmodified: u64,
    health_checks: u64,
    max_sessions: usize,
    max_homed: usize,
    max_names: usize,
}

/// Every refusal counter of every supernode, summed.
fn sn_refused(w: &World) -> u64 {
    w.refusals().values().sum()
}

fn sn_session_refused(w: &World) -> u64 {
    w.supernodes()
        .iter()
        .map(|i| w.sn(*i).session_counters().refused_total())
        .sum()
}

fn agent_refused(w: &mut World, a: usize) -> u64 {
    w.agent(a).counters().refused.values().sum()
}

fn setup() -> Fuzz {
    let (mut w, sns) = mesh(3);
    let members: Vec<UserId> = sns.iter().map(|(k, _)| k.id).collect();
    let honest = w.add_client(sns.clone(), true);
    let mut rot = sns.clone();
    rot.rotate_left(1);
    let checker = w.add_client(rot, false);
    w.run(Duration::from_secs(2));
    let honest_id = w.agent(honest).id();
    assert!(w.agent(honest).is_registered());

    // The client attacker.
    let mallory = identity(90_001);
    let client = w.add_attacker(mallory.clone(), false);
    let client_s = w.attacker_connect(client, &sns[0].0, sns[0].1);

    // The member attacker joins the mesh (it has a key of its own, so it may).
    let trudy = identity(90_002);
    let member = w.add_attacker(trudy.clone(), true);
    let me = w.attacker_member(member);
    let seed_member = Member {
        id: sns[0].0.id,
        noise: sns[0].0.noise,
        addr: sns[0].1,
        generation: 0,
    };
    w.attacker_joins(member, me.clone(), Some(seed_member));
    w.run(Duration::from_secs(6));
    assert_eq!(w.sn(0).members().len(), 4, "the member attacker joined");
    let member_s = *w
        .attacker(member)
        .sessions
        .get(&sns[0].0.id)
        .expect("a session with supernode 0");
    let mut with_member = members.clone();
    with_member.push(trudy.id());
    let via_member_user = (0u32..)
        .map(|n| {
            let mut b = [0x77; 20];
            b[..4].copy_from_slice(&n.to_be_bytes());
            UserId(b)
        })
        .find(|u| user_homes(u, &with_member)[0] == trudy.id())
        .unwrap();
    let via_member_name = (0u32..)
        .map(|n| format!("name{n}"))
        .find(|n| name_homes(n, &with_member)[0] == trudy.id())
        .unwrap();
    {
        let (u, n) = (via_member_user, via_member_name.clone());
        let a = w.attacker(member);
        a.answer = Answer::Member;
        a.hold = Some(Box::new(move |r| {
            matches!(r, Request::PFetch(x) if *x == u)
                || matches!(r, Request::PFetchName(x) if *x == n)
        }));
    }

    // The agent under fuzz, whose only supernode is an attacker.
    let fake = identity(90_003);
    let fake_sn = w.add_attacker(fake.clone(), true);
    {
        let a = w.attacker(fake_sn);
        a.answer = Answer::Directory;
        a.hold = Some(Box::new(|r| {
            matches!(
                r,
                Request::CLookup(_)
                    | Request::CClaim { .. }
                    | Request::CRelays
                    | Request::CRoute { .. }
            )
        }));
    }
    let fake_key = fake.node_key();
    let fake_addr = w.addr(fake_sn);
    let cfg_list = vec![(fake_key, fake_addr)];
    let agent_identity = identity(90_004);
    let agent = w.add_client_with(agent_identity.clone(), cfg_list, true);
    w.run(Duration::from_secs(1));
    assert!(
        w.agent(agent).is_registered(),
        "the fuzzed agent registered with its fake supernode"
    );
    let agent_s = *w
        .attacker(fake_sn)
        .sessions
        .get(&agent_identity.id())
        .expect("the agent's session");

    // Seeds.
    let now = w.unix();
    let entry = match w.lookup(checker, Target::Id(honest_id)).unwrap() {
        Some(e) => e,
        None => panic!("the honest client is found"),
    };
    let reg = registration(&mallory, 10, sns[0].0.id, now, RECORD_LIFE);
    let claim_m = claim(&mallory, 11, "mallory", now, RECORD_LIFE);
    let claim_t = claim(&trudy, 12, "trudy", now, RECORD_LIFE);
    let node = NodeInfo {
        key: sns[1].0,
        addr: sns[1].1,
    };
    let offer = RelayOffer {
        relay: trudy.id(),
        udp: vec!["10.9.0.1:3478".parse().unwrap()],
        tcp: vec!["10.9.0.1:3478".parse().unwrap()],
        tls: vec![],
        realm: "voxmesh".into(),
        username: format!("{}:{}:{}", now + 600, sns[0].0.id, honest_id),
        password: "aGVsbG8gd29ybGQgaGVsbG8gd28=".into(),
        expires_at: now + 600,
        load: 3,
    };
    let requests = vec![
        Request::CRegister {
            record: reg.clone(),
        },
        Request::CRefresh,
        Request::CLookup(Target::Id(honest_id)),
        Request::CLookup(Target::Name("alice".into())),
        Request::CWatch(honest_id),
        Request::CUnwatch(honest_id),
        Request::CClaim {
            claim: claim_m.clone(),
        },
        Request::CRoute {
            to: honest_id,
            payload: b"INVITE sip:honest".to_vec(),
        },
        Request::CRelays,
        Request::CStandby {
            primary: sns[1].0.id,
        },
        Request::CStandbyIs {
            standby: sns[2].0.id,
        },
        Request::CMembers,
        Request::CMembersPage {
            after: Some(sns[1].0.id),
            digest: None,
        },
        Request::PStore {
            user: honest_id,
            entry: entry.clone(),
        },
        Request::PFetch(honest_id),
        Request::PFetchName("alice".into()),
        Request::PWatch {
            user: honest_id,
            watcher: trudy.id(),
        },
        Request::PUnwatch {
            user: honest_id,
            watcher: trudy.id(),
        },
        Request::PForward {
            from: trudy.id(),
            to: honest_id,
            payload: b"hello".to_vec(),
        },
        Request::PClaim {
            claim: claim_t.clone(),
        },
        Request::PClaimStore {
            claim: claim_t.clone(),
            orderer: sns[0].0.id,
            order: 3,
            received_at: now,
        },
        Request::RHello {
            udp: vec!["10.9.0.1:3478".parse().unwrap()],
            tcp: vec![],
            tls: vec![],
            realm: "voxmesh".into(),
            secret: vec![7; 32],
            load: 1,
        },
        Request::PProbe {
            to: "10.9.0.1:3478".parse().unwrap(),
            nonce: 7,
        },
    ];
    let responses = vec![
        Response::Ok,
        Response::Registered {
            expires_at: now + 3600,
        },
        Response::Entry(entry.clone()),
        Response::NotFound,
        Response::Claimed {
            name: "alice".into(),
        },
        Response::Holder(Some(honest_id)),
        Response::Routed,
        Response::Reply(b"ringing".to_vec()),
        Response::Relays(vec![offer]),
        Response::Members(vec![
            node.clone(),
            NodeInfo {
                key: sns[2].0,
                addr: sns[2].1,
            },
        ]),
        Response::MembersPage {
            members: vec![node.clone()],
            next: Some(sns[2].0.id),
            digest: voxmesh::signal::Digest([9; 16]),
            total: 40,
        },
        Response::Error {
            code: 404,
            reason: "unknown user".into(),
        },
    ];
    // SWIM: the member's own announce (its header names it), and what the mesh sent it.
    let mut announce = Mesh::new(me.clone(), &MeshConfig::default(), 3, w.now);
    announce.join(
        w.now,
        Member {
            id: sns[1].0.id,
            noise: sns[1].0.noise,
            addr: sns[1].1,
            generation: 0,
        },
    );
    let (_, swim_own) = announce.poll_send().expect("an announce");
    let swim_seen = w
        .attacker(member)
        .swim_seen
        .first()
        .cloned()
        .expect("SWIM traffic reached the member");
    let messages = vec![
        Message::Swim(swim_own),
        Message::Swim(swim_seen),
        Message::Presence {
            user: honest_id,
            online: false,
            last_seen: now,
            stale: true,
        },
        Message::PrimaryLost {
            primary: sns[0].0.id,
        },
        Message::StandbyLost {
            standby: sns[1].0.id,
        },
        Message::RLoad { allocations: 5 },
        Message::Deliver {
            from: trudy.id(),
            payload: b"hi".to_vec(),
        },
    ];
    let seeds = Seeds {
        requests,
        responses,
        messages,
    };
    let encoded = seeds.encoded();
    let max_body = fast_session(true).max_body();
    Fuzz {
        w,
        sns,
        honest,
        honest_id,
        checker,
        client,
        client_s,
        member,
        member_s,
        via_member_user,
        via_member_name,
        fake_sn,
        agent,
        agent_s,
        seeds,
        encoded,
        max_body,
    }
}

/// One to four byte-level mutations of `seed`.
fn mutate(rng: &mut SmallRng, seed: &[u8], others: &[Vec<u8>], max: usize) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, signal::VERSION, 0x20];
    let mut b = seed.to_vec();
    // One mutation half the time (it keeps most of the message intact, so it gets further in),
    // up to four otherwise.
    let rounds = if rng.random_bool(0.5) {
        1
    } else {
        rng.random_range(2..=4)
    };
    for _ in 0..rounds {
        let len = b.len();
        match rng.random_range(0..12) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 => b.truncate(rng.random_range(0..=len)),
            3 => {
                let n = rng.random_range(1..64);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 => {
                let at = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                b.splice(at..at, ins);
            }
            5 if len > 1 => {
                let a = rng.random_range(0..len);
                let e = (a + rng.random_range(1..=16)).min(len);
                b.drain(a..e);
            }
            6 => {
                let o = &others[rng.random_range(0..others.len())];
                let at = rng.random_range(0..=len);
                let from = rng.random_range(0..=o.len());
                b.truncate(at);
                b.extend_from_slice(&o[from..]);
            }
            7 if len > 1 => b[1] = rng.random_range(0..40),
            8 if len > 0 => b[0] = rng.random(),
            9 => {
                let at = rng.random_range(0..=len);
                b.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
            }
            10 if len > 1 => {
                let a = rng.random_range(0..len);
                let e = (a + rng.random_range(1..=32)).min(len);
                let dup = b[a..e].to_vec();
                b.splice(e..e, dup);
            }
            11 => {
                while b.len() < max {
                    b.push(rng.random());
                }
            }
            _ => {}
        }
    }
    b.truncate(max);
    b
}

/// A valid message with what is inside it mutated: a signed record, or a SWIM datagram.
/// `None` for seeds with nothing inside.
fn mutate_inside(
    rng: &mut SmallRng,
    seed: &[u8],
    others: &[Vec<u8>],
    max: usize,
) -> Option<Vec<u8>> {
    let mut m = |b: &[u8]| mutate(rng, b, others, max.saturating_sub(64));
    if let Ok(req) = signal::decode::<Request>(seed) {
        let req = match req {
            Request::CRegister { record } => Request::CRegister { record: m(&record) },
            Request::CClaim { claim } => Request::CClaim { claim: m(&claim) },
            Request::PClaim { claim } => Request::PClaim { claim: m(&claim) },
            Request::PClaimStore {
                claim,
                orderer,
                order,
                received_at,
            } => Request::PClaimStore {
                claim: m(&claim),
                orderer,
                order,
                received_at,
            },
            Request::PStore { user, mut entry } => {
                entry.record = m(&entry.record).into();
                Request::PStore { user, entry }
            }
            _ => return None,
        };
        return Some(signal::encode(&req));
    }
    if let Ok(Response::Entry(mut e)) = signal::decode::<Response>(seed) {
        e.record = m(&e.record).into();
        return Some(signal::encode(&Response::Entry(e)));
    }
    if let Ok(Message::Swim(d)) = signal::decode::<Message>(seed) {
        return Some(signal::encode(&Message::Swim(m(&d))));
    }
    None
}

/// What one case's bytes are, for a failure message.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Fuzz {
    /// The body for one case from `pool` seeds; counts structured and unmodified cases.
    fn body(&self, rng: &mut SmallRng, pool: &[Vec<u8>], t: &mut Tally) -> Vec<u8> {
        let seed = &pool[rng.random_range(0..pool.len())];
        match rng.random_range(0..20) {
            0 => {
                t.unmodified += 1;
                seed.clone()
            }
            1..=5 => match mutate_inside(rng, seed, &self.encoded, self.max_body) {
                Some(b) => {
                    t.structured += 1;
                    b
                }
                None => mutate(rng, seed, &self.encoded, self.max_body),
            },
            _ => mutate(rng, seed, &self.encoded, self.max_body),
        }
    }

    /// Whether supernode 0 takes attacker `att` for a relay.
    fn is_relay(&mut self, att: usize) -> bool {
        let id = self.w.attacker(att).identity.id().to_string();
        self.w.sn(0).status().relays.iter().any(|(r, _)| *r == id)
    }

    /// Sends a request as attacker `att` on `s` and waits for its answer (bounded).
    fn request(&mut self, att: usize, s: SessionId, body: &[u8]) -> Result<Vec<u8>, String> {
        self.w.ask_raw(att, s, body)
    }

    /// Runs one case; returns its verdict.
    fn case(&mut self, rng: &mut SmallRng, route: Route, t: &mut Tally) -> (String, Vec<u8>) {
        let sn0 = sn_refused(&self.w) + sn_session_refused(&self.w);
        let ag0 = agent_refused(&mut self.w, self.agent);
        let requests: Vec<Vec<u8>> = self.seeds.requests.iter().map(signal::encode).collect();
        let responses: Vec<Vec<u8>> = self.seeds.responses.iter().map(signal::encode).collect();
        let messages: Vec<Vec<u8>> = self.seeds.messages.iter().map(signal::encode).collect();
        match route {
            Route::ClientRequest | Route::MemberRequest => {
                let (att, s) = if route == Route::ClientRequest {
                    (self.client, self.client_s)
                } else {
                    (self.member, self.member_s)
                };
                let body = self.body(rng, &requests, t);
                let answer = self
                    .request(att, s, &body)
                    .unwrap_or_else(|e| panic!("no answer: {e} to {}", hex(&body)));
                let counted = sn_refused(&self.w) + sn_session_refused(&self.w) > sn0;
                let verdict = match signal::decode::<Response>(&answer) {
                    Ok(Response::Error { code, .. }) => {
                        // Errors decided by a supernode are counted there; 504 means a peer
                        // did not answer in time (nothing was refused).
                        assert!(
                            counted || code == 504,
                            "an error {code} nobody counted, for {}",
                            hex(&body)
                        );
                        format!("answered_error_{code}")
                    }
                    Ok(_) => "answered".to_string(),
                    Err(e) => panic!("undecodable answer {e} to {}", hex(&body)),
                };
                (verdict, body)
            }
            Route::ClientMessage | Route::MemberMessage => {
                let (att, s) = if route == Route::ClientMessage {
                    (self.client, self.client_s)
                } else {
                    (self.member, self.member_s)
                };
                let body = self.body(rng, &messages, t);
                let now = self.w.now;
                self.w.attacker(att).ep.send(now, s, &body).unwrap();
                self.w.run(Duration::from_millis(6));
                let counted = sn_refused(&self.w) + sn_session_refused(&self.w) > sn0;
                let verdict = if counted {
                    "counted".to_string()
                } else {
                    // Accepted: SWIM (the mesh took it), presence from a member.
                    match signal::decode::<Message>(&body) {
                        Ok(Message::Swim(_)) => "accepted_swim".into(),
                        Ok(Message::Presence { .. }) if route == Route::MemberMessage => {
                            "accepted_presence".into()
                        }
                        // From a session that made itself a relay (an RHello case before).
                        Ok(Message::RLoad { .. }) if self.is_relay(att) => "accepted_load".into(),
                        Ok(m) => panic!(
                            "{route:?}: {m:?} neither counted nor accepted ({})",
                            hex(&body)
                        ),
                        Err(e) => panic!(
                            "{route:?}: undecodable ({e}) and not counted: {}",
                            hex(&body)
                        ),
                    }
                };
                (verdict, body)
            }
            Route::ResponseToSupernode => {
                let by_name = rng.random_bool(0.3);
                let req = if by_name {
                    Request::CLookup(Target::Name(self.via_member_name.clone()))
                } else {
                    Request::CLookup(Target::Id(self.via_member_user))
                };
                let now = self.w.now;
                let txn = self
                    .w
                    .attacker(self.client)
                    .ep
                    .request(now, self.client_s, &signal::encode(&req))
                    .unwrap();
                let member = self.member;
                let held = self.w.run_until(Duration::from_secs(2), |w| {
                    !w.attacker(member).requests.is_empty()
                });
                assert!(held, "the supernode did not fetch from its member");
                let body = self.body(rng, &responses, t);
                let now = self.w.now;
                let a = self.w.attacker(member);
                for (sid, txn, _) in std::mem::take(&mut a.requests) {
                    a.ep.respond(now, sid, txn, &body).unwrap();
                }
                let client = self.client;
                let mut answer = None;
                self.w.run_until(Duration::from_secs(8), |w| {
                    answer = w.attacker(client).take_response(txn);
                    answer.is_some()
                });
                let answer = answer.expect("the lookup was answered").expect("an answer");
                let counted = sn_refused(&self.w) + sn_session_refused(&self.w) > sn0;
                let resp: Response = signal::decode(&answer).expect("a decodable answer");
                let fits = matches!(
                    signal::decode::<Response>(&body),
                    Ok(Response::NotFound | Response::Error { .. } | Response::Holder(None))
                ) || matches!(signal::decode::<Response>(&body), Ok(Response::Holder(Some(_))) if by_name);
                assert!(
                    counted || fits,
                    "response {} to a fetch neither counted nor usable",
                    hex(&body)
                );
                let verdict = match resp {
                    Response::Entry(_) => "lookup_answered_entry",
                    Response::NotFound => "lookup_answered_not_found",
                    Response::Error { .. } => "lookup_answered_error",
                    _ => "lookup_answered_other",
                };
                (
                    format!("{verdict}{}", if counted { "_counted" } else { "" }),
                    body,
                )
            }
            Route::AgentMessage => {
                let body = self.body(rng, &messages, t);
                let now = self.w.now;
                let (fs, s) = (self.fake_sn, self.agent_s);
                self.w.attacker(fs).ep.send(now, s, &body).unwrap();
                self.w.run(Duration::from_millis(6));
                let counted = agent_refused(&mut self.w, self.agent) > ag0;
                let verdict = if counted {
                    "counted".to_string()
                } else {
                    match signal::decode::<Message>(&body) {
                        Ok(Message::Presence { .. }) => "accepted_presence".into(),
                        Ok(m) => panic!("agent: {m:?} neither counted nor accepted"),
                        Err(e) => {
                            panic!("agent: undecodable ({e}) and not counted: {}", hex(&body))
                        }
                    }
                };
                (verdict, body)
            }
            Route::AgentRequest => {
                let body = self.body(rng, &messages, t);
                let (fs, s) = (self.fake_sn, self.agent_s);
                let answer = self.request(fs, s, &body).expect("the agent answers");
                let counted = agent_refused(&mut self.w, self.agent) > ag0;
                let verdict = match signal::decode::<Response>(&answer) {
                    Ok(Response::Ok) => "answered".to_string(),
                    Ok(Response::Error { code, .. }) => {
                        assert!(counted, "agent: an error nobody counted");
                        format!("answered_error_{code}")
                    }
                    other => panic!("agent answered {other:?}"),
                };
                (verdict, body)
            }
            Route::AgentResponse => {
                let now = self.w.now;
                let op = rng.random_range(0..5);
                let honest = self.honest_id;
                let agent = self.agent;
                match op {
                    0 => self.w.agent(agent).lookup(now, Target::Id(honest)),
                    1 => self
                        .w
                        .agent(agent)
                        .lookup(now, Target::Name("alice".into())),
                    2 => self.w.agent(agent).claim(now, "alice").unwrap(),
                    3 => self.w.agent(agent).relays(now),
                    _ => {
                        self.w.agent(agent).route(now, honest, b"ring".to_vec());
                    }
                }
                let fs = self.fake_sn;
                let got = self.w.run_until(Duration::from_secs(2), |w| {
                    !w.attacker(fs).requests.is_empty()
                });
                assert!(got, "the agent's request did not arrive");
                let body = self.body(rng, &responses, t);
                let now = self.w.now;
                let a = self.w.attacker(fs);
                for (sid, txn, _) in std::mem::take(&mut a.requests) {
                    a.ep.respond(now, sid, txn, &body).unwrap();
                }
                let mut event = None;
                self.w.run_until(Duration::from_secs(8), |w| {
                    let evs = w.events.entry(agent).or_default();
                    if let Some(i) = evs.iter().position(|e| {
                        matches!(
                            e,
                            AgentEvent::Lookup { .. }
                                | AgentEvent::Claimed { .. }
                                | AgentEvent::Relays(_)
                                | AgentEvent::Routed { .. }
                                | AgentEvent::Error { .. }
                        )
                    }) {
                        event = Some(evs.remove(i));
                        return true;
                    }
                    false
                });
                let event = event
                    .unwrap_or_else(|| panic!("the agent reported nothing for {}", hex(&body)));
                let counted = agent_refused(&mut self.w, self.agent) > ag0;
                let fits = match (op, signal::decode::<Response>(&body)) {
                    (_, Ok(Response::Error { .. })) => true,
                    (0, Ok(Response::Entry(e))) => e.signer() == Some(honest),
                    (1, Ok(Response::Entry(e))) => e.signer().is_some(),
                    (0 | 1, Ok(Response::NotFound)) => true,
                    (2, Ok(Response::Claimed { .. })) => true,
                    (3, Ok(Response::Relays(_))) => true,
                    (4, Ok(Response::Routed)) => true,
                    _ => false,
                };
                assert!(
                    counted || fits,
                    "agent: response {} neither counted nor usable ({event:?})",
                    hex(&body)
                );
                let kind = match event {
                    AgentEvent::Lookup { result: Ok(_), .. } => "lookup_ok",
                    AgentEvent::Lookup { result: Err(_), .. } => "lookup_err",
                    AgentEvent::Claimed { .. } => "claimed",
                    AgentEvent::Relays(Ok(_)) => "relays_ok",
                    AgentEvent::Relays(Err(_)) => "relays_err",
                    AgentEvent::Routed { result: Ok(_), .. } => "routed_ok",
                    AgentEvent::Routed { result: Err(_), .. } => "routed_err",
                    _ => "error_event",
                };
                (
                    format!("{kind}{}", if counted { "_counted" } else { "" }),
                    body,
                )
            }
        }
    }

    /// The service still works and every table is within bounds.
    fn health(&mut self, t: &mut Tally) {
        // Drain what piled up on the attackers and agents.
        for i in [self.client, self.member, self.fake_sn] {
            let a = self.w.attacker(i);
            a.events.clear();
            a.requests.clear();
        }
        self.w.take_events(self.honest);
        self.w.take_events(self.agent);
        let e = self
            .w
            .lookup(self.checker, Target::Id(self.honest_id))
            .expect("the checker's lookup")
            .expect("the honest client is found");
        assert!(e.online && !e.stale, "{e:?}");
        assert_eq!(e.signer(), Some(self.honest_id));
        assert!(self.w.agent(self.honest).is_registered());
        let agent = self.agent;
        let back = self
            .w
            .run_until(Duration::from_secs(30), |w| w.agent(agent).is_registered());
        assert!(back, "the fuzzed agent is registered with its supernode");
        for i in self.w.supernodes() {
            let st = self.w.sn(i).status();
            t.max_sessions = t.max_sessions.max(st.sessions);
            t.max_homed = t.max_homed.max(st.homed_users);
            t.max_names = t.max_names.max(st.names);
            assert!(st.sessions <= 16, "sessions at {i}: {}", st.sessions);
            assert!(
                st.homed_users <= 16,
                "homed users at {i}: {}",
                st.homed_users
            );
            assert!(st.names <= 8, "names at {i}: {}", st.names);
            assert!(st.relays.len() <= 2, "relays at {i}: {:?}", st.relays);
            assert!(
                st.counters.refused.len() <= 200,
                "refusal reasons at {i}: {}",
                st.counters.refused.len()
            );
        }
        t.health_checks += 1;
    }
}

#[test]
fn fuzz_signalling() {
    let cases = env_u64("VOXMESH_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let started = std::time::Instant::now();
    let mut f = setup();
    let refused_before = f.w.refusals();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::default();
    for case in 0..cases {
        let route = Route::ALL[rng.random_range(0..Route::ALL.len())];
        let mut case_rng = SmallRng::seed_from_u64(rng.random());
        let r = catch_unwind(AssertUnwindSafe(|| f.case(&mut case_rng, route, &mut t)));
        match r {
            Ok((verdict, _)) => {
                *t.verdicts
                    .entry(format!("{}/{verdict}", route.name()))
                    .or_default() += 1;
            }
            Err(p) => {
                eprintln!("fuzz_signal: case {case} (seed {seed:#x}, route {route:?}) failed");
                resume_unwind(p);
            }
        }
        *t.routes.entry(route.name()).or_default() += 1;
        t.cases += 1;
        if (case + 1) % HEALTH_EVERY == 0 {
            f.health(&mut t);
        }
    }
    f.health(&mut t);
    // Fresh clients register, look each other up and are looked up.
    let sns = f.sns.clone();
    assert_service(&mut f.w, &sns, 0, "after the fuzzing");

    let secs = started.elapsed().as_secs_f64();
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in f.w.refusals() {
        let d = v - refused_before.get(&k).copied().unwrap_or(0);
        if d > 0 {
            refused.insert(k, d);
        }
    }
    let agent_refused: BTreeMap<String, u64> =
        f.w.agent(f.agent)
            .counters()
            .refused
            .clone()
            .into_iter()
            .collect();
    let mut session_refused: BTreeMap<String, u64> = BTreeMap::new();
    for i in f.w.supernodes() {
        for (k, v) in f.w.sn(i).session_counters().iter() {
            if k.starts_with("refused_") && v > 0 {
                *session_refused.entry(k).or_default() += v;
            }
        }
    }
    let json = serde_json::json!({
        "cases": t.cases,
        "seed": seed,
        "seconds": (secs * 100.0).round() / 100.0,
        "cases_per_second": (t.cases as f64 / secs).round(),
        "routes": t.routes,
        "structured_mutations": t.structured,
        "unmodified_seeds": t.unmodified,
        "verdicts": t.verdicts,
        "refused_by_supernodes": refused,
        "refused_by_agent": agent_refused,
        "session_refusals": session_refused,
        "health_checks_passed": t.health_checks,
        "max_sessions": t.max_sessions,
        "max_homed_users": t.max_homed,
        "max_names": t.max_names,
        "simulated_seconds": f.w.now.duration_since(f.w.start).as_secs(),
        "panics": 0,
    });
    let text = serde_json::to_string_pretty(&json).unwrap();
    eprintln!("{text}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_REPORT") {
        std::fs::write(path, text + "\n").unwrap();
    }
}
