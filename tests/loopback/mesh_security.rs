//! The supernode mesh under attack, end to end (the security criterion of the supernode-mesh
//! issue). Each attack is refused with a reason (a response code and reason, or a session-layer
//! refusal), the refusal is counted (`Supernode::status().counters.refused`,
//! `Supernode::session_counters()`, or `supernoded status --json`), and afterwards honest clients
//! still register, look others up and are looked up ([`assert_service`]).
//!
//! The first part runs supernodes, agents and attackers on the simulated network of
//! `tests/support/mesh.rs` (the approach of `tests/sim/mesh_sim.rs`); the attackers are bare session
//! endpoints that send whatever they like inside authenticated sessions. The second part runs the
//! real `supernoded` (and `answer`, `dial`, `relayd`) on loopback: 127.0.0.1 for the daemons and
//! the attacker, 127.0.0.2 and 127.0.0.3 for honest clients. Nothing leaves the host.
//!
//! What the layers below already cover, and is not repeated here: the session layer's handling of
//! unbound Noise keys, wrong node keys, replays, floods and malformed frames
//! (`tests/sim/session_security.rs`, `tests/fuzz/session_fuzz.rs`); record verification (forgery, replay,
//! expiry, wrong keys, domain separation) and the name-claim ordering rule
//! (`tests/core/identity_records.rs`); relay credentials altered in any part
//! (`tests/loopback/relay_directory.rs`). Malformed signalling messages by the million are in
//! `tests/fuzz/fuzz_signal.rs`.

use crate::support::mesh as mesh_support;

use std::time::{Duration, Instant};

use mesh_support::*;
use voxmesh::client::AgentEvent;
use voxmesh::directory::{name_homes, user_homes};
use voxmesh::identity::{Identity, NodeKey, RecordKind, UserId};
use voxmesh::mesh::{Member, Mesh, MeshConfig};
use voxmesh::session::Refusal;
use voxmesh::signal::{self, Request, Response, Target};

/// The refusal counter `reason` of supernode `sn`.
fn refused(w: &World, sn: usize, reason: &str) -> u64 {
    w.sn(sn)
        .status()
        .counters
        .refused
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// Asks `req` as attacker `att` on `s` at supernode `sn`; asserts the answer is an error with
/// `code` whose reason contains `reason`, and that `sn` counted it under that reason.
#[track_caller]
fn expect_refusal(
    w: &mut World,
    att: usize,
    s: voxmesh::session::SessionId,
    sn: usize,
    req: &Request,
    code: u16,
    reason: &str,
) {
    let before = refused(w, sn, reason);
    let resp = w.ask(att, s, req);
    match &resp {
        Response::Error { code: c, reason: r } => {
            assert_eq!(*c, code, "{req:?}: {resp:?}");
            assert!(
                r.contains(reason),
                "{req:?}: reason {r:?}, wanted {reason:?}"
            );
        }
        other => panic!("{req:?} was not refused: {other:?}"),
    }
    assert_eq!(
        refused(w, sn, reason),
        before + 1,
        "{reason:?} counted once at supernode {sn}"
    );
}

// ---------------------------------------------------------------------- registrations

/// Forged, expired, future, wrong-kind, another user's, misdirected and replayed registrations,
/// all from an authenticated session: each refused with its reason and counted; the victim whose
/// record was replayed stays registered where it is; the attacker's own honest registration then
/// works and a replay of it (older, or the very same record) is refused.
#[test]
fn forged_replayed_expired_and_misdirected_registrations_are_refused() {
    let (mut w, sns) = mesh(3);
    let victim = w.add_client(sns.clone(), true);
    w.run(Duration::from_secs(2));
    let victim_id = w.agent(victim).id();
    let victim_sn = w.agent(victim).primary().unwrap().0;

    let mallory = w.fresh_identity();
    let m_id = mallory.id();
    let att = w.add_attacker(mallory.clone(), false);
    let s = w.attacker_connect(att, &sns[0].0, sns[0].1);
    let sn0 = sns[0].0.id;
    let now = w.unix();

    // The victim's real, valid record, as anyone gets it from a lookup.
    let looked_up = match w.ask(att, s, &Request::CLookup(Target::Id(victim_id))) {
        Response::Entry(e) => e.record,
        other => panic!("lookup of the victim: {other:?}"),
    };
    let mut forged = registration(&mallory, 5, sn0, now, 3600);
    *forged.last_mut().unwrap() ^= 0x40;
    let mut victims_key_garbage_sig = looked_up.to_vec();
    let n = victims_key_garbage_sig.len();
    victims_key_garbage_sig[n - 64..].fill(0x11);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "forged signature",
            forged,
            403,
            "registration refused: bad_signature",
        ),
        (
            "expired",
            registration(&mallory, 5, sn0, now - 7200, 3600),
            403,
            "registration refused: expired",
        ),
        (
            "from the future",
            registration(&mallory, 5, sn0, now + 3600, 3600),
            403,
            "registration refused: from_the_future",
        ),
        (
            "lifetime beyond policy",
            registration(&mallory, 5, sn0, now, 90 * 24 * 3600),
            403,
            "registration refused: bad_lifetime",
        ),
        (
            "a name claim offered as a registration",
            claim(&mallory, 5, "mallory", now, 3600),
            403,
            "registration refused: wrong_kind",
        ),
        (
            "payload that is not a registration",
            raw_record(&mallory, RecordKind::Registration, 5, now, &[0xff; 3]),
            403,
            "registration refused: bad_payload",
        ),
        (
            "garbage",
            vec![1, 2, 3, 4],
            403,
            "registration refused: malformed",
        ),
        (
            "oversized",
            vec![1; 1100],
            403,
            "registration refused: too_large",
        ),
        (
            "the victim's record, replayed by another key",
            looked_up.to_vec(),
            403,
            "registration refused: wrong_key",
        ),
        (
            "the victim's key with a garbage signature",
            victims_key_garbage_sig,
            403,
            "registration refused: wrong_key",
        ),
        (
            "naming another supernode",
            registration(&mallory, 5, sns[1].0.id, now, 3600),
            400,
            "registration names another supernode",
        ),
    ];
    for (what, record, code, reason) in cases {
        eprintln!("case: {what}");
        expect_refusal(
            &mut w,
            att,
            s,
            0,
            &Request::CRegister { record },
            code,
            reason,
        );
    }
    assert_eq!(
        w.sn(0).status().clients,
        1,
        "only the victim is registered at supernode 0 (if it is there)"
    );

    // Mallory registers honestly (seq 100); an older record, and the very same one, are replays.
    let r100 = registration(&mallory, 100, sn0, now, 3600);
    assert!(matches!(
        w.ask(
            att,
            s,
            &Request::CRegister {
                record: r100.clone()
            }
        ),
        Response::Registered { .. }
    ));
    let stale = "registration refused: stale_sequence";
    expect_refusal(
        &mut w,
        att,
        s,
        0,
        &Request::CRegister {
            record: registration(&mallory, 99, sn0, now, 3600),
        },
        403,
        stale,
    );
    expect_refusal(
        &mut w,
        att,
        s,
        0,
        &Request::CRegister { record: r100 },
        403,
        stale,
    );
    let r101 = registration(&mallory, 101, sn0, now, 3600);
    assert!(matches!(
        w.ask(
            att,
            s,
            &Request::CRegister {
                record: r101.clone()
            }
        ),
        Response::Registered { .. }
    ));
    w.run(Duration::from_millis(200));
    // Every home holds sequence 101, and the victim's entry is untouched.
    let homes = user_homes(&m_id, &sns.iter().map(|(k, _)| k.id).collect::<Vec<_>>());
    for (i, (k, _)) in sns.iter().enumerate() {
        assert_eq!(w.sn(i).homed_users().contains(&m_id), homes.contains(&k.id));
    }
    let checker = w.add_client(sns.clone(), false);
    let e = w
        .lookup(checker, Target::Id(victim_id))
        .unwrap()
        .expect("victim found");
    assert!(e.online && !e.stale);
    assert_eq!(e.via, victim_sn);
    assert_eq!(entry_user(&e, w.unix()), victim_id);
    let e = w
        .lookup(checker, Target::Id(m_id))
        .unwrap()
        .expect("mallory found");
    assert_eq!(*e.record, *r101);
    assert_service(&mut w, &sns, 0, "after the registration attacks");
}

/// A client that is registered at supernode A may not have its registration replayed at
/// supernode B by anyone (B refuses: wrong key), and its own replay of an old record at B, where
/// it is not registered, is refused once B knows a newer one (B is one of its homes).
#[test]
fn a_replayed_record_at_another_supernode_is_refused() {
    let (mut w, sns) = mesh(3);
    let members: Vec<UserId> = sns.iter().map(|(k, _)| k.id).collect();
    // A user homed at supernode 1 (so supernode 1 knows its sequence numbers).
    let user = (0..)
        .map(|n| identity(50_000 + n))
        .find(|i| user_homes(&i.id(), &members).contains(&sns[1].0.id))
        .unwrap();
    let att = w.add_attacker(user.clone(), false);
    let s0 = w.attacker_connect(att, &sns[0].0, sns[0].1);
    let now = w.unix();
    let r7 = registration(&user, 7, sns[0].0.id, now, 3600);
    assert!(matches!(
        w.ask(att, s0, &Request::CRegister { record: r7 }),
        Response::Registered { .. }
    ));
    w.run(Duration::from_millis(200));
    // An older record naming supernode 1, offered there: supernode 1 homes the user and has 7.
    let s1 = w.attacker_connect(att, &sns[1].0, sns[1].1);
    let r6 = registration(&user, 6, sns[1].0.id, now, 3600);
    expect_refusal(
        &mut w,
        att,
        s1,
        1,
        &Request::CRegister { record: r6 },
        403,
        "registration refused: stale_sequence",
    );
    assert_service(&mut w, &sns, 1, "after the replay");
}

// ---------------------------------------------------------------------- keys and bindings

/// A client whose Noise static key is not bound to the identity it claims (its key file's
/// binding belongs to another identity), a client given a node key naming another identity for
/// a real supernode, and one given a Noise key nobody holds: each fails cleanly with a clear
/// error, never registers, and the supernode counts the refusal where it sees one.
#[test]
fn wrong_keys_and_unbound_noise_keys_fail_cleanly_end_to_end() {
    let (mut w, sns) = mesh(3);
    let (k0, a0) = sns[0];
    let c0 = w.sn(0).session_counters().clone();

    // 1. Not bound: the binding was made by another identity.
    let other = w.fresh_identity();
    let unbound = w.fresh_identity().with_binding_for_tests(*other.binding());
    let unbound_id = unbound.id();
    let c_unbound = w.add_client_with(unbound, vec![(k0, a0)], true);
    // 2. The right Noise key under another identity's ID.
    let wrong_id = NodeKey {
        id: sns[1].0.id,
        noise: k0.noise,
    };
    let c_wrong_id = w.add_client(vec![(wrong_id, a0)], true);
    // 3. A Noise key nobody holds.
    let unknown = NodeKey {
        id: k0.id,
        noise: [7; 32],
    };
    let c_unknown = w.add_client(vec![(unknown, a0)], true);

    w.run(Duration::from_secs(25));
    let errors = |w: &mut World, c: usize| -> Vec<String> {
        w.take_events(c)
            .into_iter()
            .map(|e| match e {
                AgentEvent::Error { message } => message,
                AgentEvent::Registered { .. } => panic!("client {c} registered"),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let e1 = errors(&mut w, c_unbound);
    assert!(
        e1.iter()
            .any(|m| m.contains("refused our identity binding")),
        "{e1:?}"
    );
    let e2 = errors(&mut w, c_wrong_id);
    let want = format!("the responder is {}, not {}", k0.id, sns[1].0.id);
    assert!(e2.iter().any(|m| m.contains(&want)), "{e2:?}");
    let e3 = errors(&mut w, c_unknown);
    assert!(
        e3.iter()
            .any(|m| m.contains("its key is not the one in the bootstrap entry")),
        "{e3:?}"
    );
    for c in [c_unbound, c_wrong_id, c_unknown] {
        assert!(!w.agent(c).is_registered());
    }
    // Retries back off (1, 2, 4, 8 s...): a broken key file or entry does not hammer the
    // supernode. 25 s allow 5 rounds.
    assert!(
        e1.len() <= 6 && e2.len() <= 6 && e3.len() <= 2,
        "{} {} {}",
        e1.len(),
        e2.len(),
        e3.len()
    );
    let c = w.sn(0).session_counters();
    assert!(
        c.refused(Refusal::BindingRefused) > c0.refused(Refusal::BindingRefused),
        "{c:?}"
    );
    assert!(
        c.refused(Refusal::BadMac1) > c0.refused(Refusal::BadMac1),
        "{c:?}"
    );
    let status = w.sn(0).status();
    assert_eq!(status.clients, 0);
    assert!(!w.sn(0).homed_users().contains(&unbound_id));
    assert_service(&mut w, &sns, 0, "after the key failures");
}

/// A supernode given a wrong bootstrap entry (another identity's ID with the seed's Noise key,
/// or a Noise key nobody holds) never joins: it stays alone, the mesh is unchanged, and the
/// refusal is counted on the side that sees it.
#[test]
fn a_supernode_with_a_wrong_bootstrap_key_does_not_join() {
    let (mut w, sns) = mesh(3);
    let (k0, a0) = sns[0];
    let bad_mac_before = w.sn(0).session_counters().refused(Refusal::BadMac1);
    let wrong_id = NodeKey {
        id: sns[1].0.id,
        noise: k0.noise,
    };
    let (x, _, _) = w.add_supernode(&[(wrong_id, a0)]);
    let unknown = NodeKey {
        id: k0.id,
        noise: [9; 32],
    };
    let (y, _, _) = w.add_supernode(&[(unknown, a0)]);
    w.run(Duration::from_secs(25));
    for i in [x, y] {
        assert_eq!(
            w.sn(i).members().len(),
            1,
            "supernode {i} joined: {:?}",
            w.sn(i).members()
        );
    }
    for i in 0..3 {
        assert_eq!(w.sn(i).members().len(), 3, "the mesh changed at {i}");
    }
    assert!(
        w.sn(x)
            .session_counters()
            .refused(Refusal::IdentityMismatch)
            >= 1
    );
    assert!(w.sn(0).session_counters().refused(Refusal::BadMac1) > bad_mac_before);
    assert_service(&mut w, &sns, 2, "after the failed joins");
}

// ---------------------------------------------------------------------- the mesh

/// A node whose SWIM traffic claims an ID that is not its key's hash (an existing supernode's,
/// or a made-up one) is refused as an impostor by the session check, counted, and never becomes
/// a member; the mesh keeps its members and their addresses.
#[test]
fn a_supernode_joining_with_an_id_that_is_not_its_keys_hash_is_refused() {
    let (mut w, sns) = mesh(3);
    let before: Vec<_> = (0..3).map(|i| w.sn(i).members()).collect();
    let seed = Member {
        id: sns[0].0.id,
        noise: sns[0].0.noise,
        addr: sns[0].1,
        generation: 0,
    };
    let mut impostors = Vec::new();
    for claimed in [sns[2].0.id, UserId([0x42; 20])] {
        let mallory = w.fresh_identity();
        let att = w.add_attacker(mallory.clone(), true);
        let addr = w.addr(att);
        // Mallory's own Noise key (so sessions work) under an ID that is not hers.
        let lie = Member {
            id: claimed,
            noise: *mallory.noise_public(),
            addr,
            generation: 7,
        };
        w.attacker_joins(att, lie, Some(seed.clone()));
        impostors.push((att, mallory.id()));
    }
    w.run(Duration::from_secs(10));
    let impostor_refusals: u64 = (0..3).map(|i| refused(&w, i, "swim impostor")).sum();
    assert!(impostor_refusals >= 2, "{:?}", w.refusals());
    for (i, members) in before.iter().enumerate() {
        assert_eq!(&w.sn(i).members(), members, "membership changed at {i}");
    }
    for (att, id) in &impostors {
        for i in 0..3 {
            assert!(
                !w.sn(i)
                    .members()
                    .iter()
                    .any(|m| m.key.id == *id || m.addr == w.addr(*att))
            );
        }
    }
    assert_service(&mut w, &sns, 0, "after the impostors");
}

/// A member (a supernode with a key of its own) gossips fake members: one at its own address
/// under an ID that is not its key's, one at an address where nothing listens. Neither is ever
/// reachable (the session layer refuses the first, nobody answers the second), neither ever
/// becomes anyone's home, no registration goes through them, and honest users whose homes they
/// would have been register and are looked up at once.
#[test]
fn gossip_naming_a_fake_member_never_makes_it_reachable() {
    let (mut w, sns) = mesh(3);
    let mallory = w.fresh_identity();
    let att = w.add_attacker(mallory.clone(), true);
    let me = w.attacker_member(att);
    let seed = Member {
        id: sns[0].0.id,
        noise: sns[0].0.noise,
        addr: sns[0].1,
        generation: 0,
    };
    w.attacker_joins(att, me.clone(), Some(seed));
    w.run(Duration::from_secs(6));
    for i in 0..3 {
        assert_eq!(
            w.sn(i).members().len(),
            4,
            "mallory is a member (she has a key of her own)"
        );
    }
    // Honest users whose first home would be a fake member (IDs are free to pick, so a fake
    // member can be placed first for any user).
    let real: Vec<UserId> = w.sn(0).members().iter().map(|m| m.key.id).collect();
    let victims: Vec<Identity> = (0..2).map(|_| w.fresh_identity()).collect();
    let fake_ids: Vec<UserId> = victims
        .iter()
        .map(|v| {
            (0u32..)
                .map(|n| {
                    let mut b = [0xfa; 20];
                    b[..4].copy_from_slice(&n.to_be_bytes());
                    b[4..8].copy_from_slice(&v.id().0[..4]);
                    UserId(b)
                })
                .find(|f| {
                    let mut m = real.clone();
                    m.push(*f);
                    user_homes(&v.id(), &m)[0] == *f
                })
                .unwrap()
        })
        .collect();
    let fakes = [
        // At Mallory's address with her Noise key, under an ID that is not her key's.
        Member {
            id: fake_ids[0],
            noise: me.noise,
            addr: me.addr,
            generation: 0,
        },
        // Nothing listens there.
        Member {
            id: fake_ids[1],
            noise: [3; 32],
            addr: "10.99.0.1:4000".parse().unwrap(),
            generation: 0,
        },
    ];
    // Mallory's SWIM learns the fakes as if they had announced themselves to her, and gossips
    // them on; she keeps doing so for as long as the test runs.
    let inject = |w: &mut World| {
        let now = w.now;
        for f in &fakes {
            let mut fm = Mesh::new(f.clone(), &MeshConfig::default(), 1, now);
            fm.join(now, me.clone());
            let (_, data) = fm.poll_send().expect("an announce");
            let a = w.attacker(att);
            let _ = a.mesh.as_mut().unwrap().handle_data(now, f.id, &data);
        }
    };
    let mismatch_before: u64 = (0..3)
        .map(|i| {
            w.sn(i)
                .session_counters()
                .refused(Refusal::IdentityMismatch)
        })
        .sum();
    inject(&mut w);
    w.run(Duration::from_millis(500));
    // The victims register and are found at once, while the fakes are gossiped.
    let clients: Vec<usize> = victims
        .iter()
        .map(|v| w.add_client_with(v.clone(), sns.clone(), true))
        .collect();
    let asker = w.add_client(sns[1..].to_vec(), false);
    for round in 0..8 {
        inject(&mut w);
        w.run(Duration::from_secs(1));
        for (k, c) in clients.iter().enumerate() {
            let id = victims[k].id();
            assert!(
                w.agent(*c).is_registered(),
                "round {round}: victim {k} not registered"
            );
            let t0 = w.now;
            let e = w
                .lookup(asker, Target::Id(id))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let e = e.unwrap_or_else(|| panic!("round {round}: victim {k} not found"));
            assert!(e.online && !e.stale);
            assert!(
                w.now - t0 < Duration::from_millis(200),
                "round {round}: lookup took {:?}",
                w.now - t0
            );
            assert!(!fake_ids.contains(&e.via));
        }
        for i in 0..3 {
            let homes = user_homes(
                &victims[0].id(),
                &w.sn(i)
                    .members()
                    .iter()
                    .map(|m| m.key.id)
                    .collect::<Vec<_>>(),
            );
            assert!(
                !homes.iter().any(|h| fake_ids.contains(h)),
                "a fake member is a home at {i}"
            );
            assert!(
                !w.sn(i)
                    .members()
                    .iter()
                    .any(|m| fake_ids.contains(&m.key.id)),
                "a fake member is listed at {i}"
            );
        }
    }
    // The first fake was tried and refused by the session layer: its key names Mallory.
    let mismatch: u64 = (0..3)
        .map(|i| {
            w.sn(i)
                .session_counters()
                .refused(Refusal::IdentityMismatch)
        })
        .sum();
    assert!(
        mismatch > mismatch_before,
        "nobody tried the fake member at Mallory's address"
    );
    // Nor can a client register through it, given its entry by hand.
    let c = w.add_client(vec![(fakes[0].node_key(), fakes[0].addr)], true);
    w.run(Duration::from_secs(3));
    assert!(!w.agent(c).is_registered());
    let ev = w.take_events(c);
    assert!(
        ev.iter().any(
            |e| matches!(e, AgentEvent::Error { message } if message.contains("the responder is"))
        ),
        "{ev:?}"
    );
    assert_service(&mut w, &sns, 1, "after the fake members");
}

// ---------------------------------------------------------------------- names

/// Two clients at two different supernodes claim the same name at the same instant: exactly one
/// wins, and a lookup through every supernode resolves the name to the winner. Then a claim of
/// the held name backdated by weeks, and a replay of the winner's claim by another key, are
/// refused and counted.
#[test]
fn two_claims_of_one_name_at_two_supernodes_have_one_winner_everywhere() {
    let (mut w, sns) = mesh(5);
    let members: Vec<UserId> = sns.iter().map(|(k, _)| k.id).collect();
    for name in ["alice", "bob", "carol", "dave"] {
        let orderer = name_homes(name, &members)[0];
        // Two supernodes that are not the orderer: the claims travel to it from both sides.
        let at: Vec<usize> = (0..5).filter(|i| members[*i] != orderer).take(2).collect();
        let ids: Vec<Identity> = (0..2).map(|_| w.fresh_identity()).collect();
        let clients: Vec<usize> = (0..2)
            .map(|k| {
                let mut list = sns.clone();
                list.rotate_left(at[k]);
                w.add_client_with(ids[k].clone(), list, true)
            })
            .collect();
        w.run(Duration::from_secs(2));
        for (k, c) in clients.iter().enumerate() {
            assert_eq!(w.agent(*c).primary().unwrap().0, members[at[k]]);
        }
        let now = w.now;
        for c in &clients {
            w.agent(*c).claim(now, name).unwrap();
        }
        w.run(Duration::from_secs(1));
        let won: Vec<bool> = clients
            .iter()
            .map(|c| {
                w.take_events(*c)
                    .iter()
                    .any(|e| matches!(e, AgentEvent::Claimed { .. }))
            })
            .collect();
        assert!(won[0] ^ won[1], "{name}: exactly one wins: {won:?}");
        let (winner, loser) = if won[0] { (0, 1) } else { (1, 0) };
        let winner_id = ids[winner].id();
        // Every supernode resolves the name to the winner.
        for (i, sn) in sns.iter().enumerate() {
            let c = w.add_client(vec![*sn], false);
            let e = w
                .lookup(c, Target::Name(name.into()))
                .unwrap()
                .unwrap_or_else(|| panic!("{name} via {i}"));
            assert_eq!(
                entry_user(&e, w.unix()),
                winner_id,
                "{name} via supernode {i}"
            );
            assert_eq!(e.name.as_deref(), Some(name));
        }
        // The loser backdates a claim by three weeks: refused, and counted at the orderer.
        let att = w.add_attacker(ids[loser].clone(), false);
        let s = w.attacker_connect(att, &sns[at[loser]].0, sns[at[loser]].1);
        let orderer_i = members.iter().position(|m| *m == orderer).unwrap();
        let before = refused(&w, orderer_i, "claim taken");
        let backdated = claim(
            &ids[loser],
            1,
            name,
            w.unix() - 21 * 24 * 3600,
            28 * 24 * 3600,
        );
        match w.ask(att, s, &Request::CClaim { claim: backdated }) {
            Response::Error { code: 409, reason } => {
                assert!(reason.contains("held by"), "{reason}")
            }
            other => panic!("{name}: a backdated claim was not refused: {other:?}"),
        }
        assert_eq!(refused(&w, orderer_i, "claim taken"), before + 1);
        // The winner's own claim record, replayed by the loser's session: another key.
        let winners_claim = claim(&ids[winner], 1, name, w.unix() - 5, 3600);
        expect_refusal(
            &mut w,
            att,
            s,
            at[loser],
            &Request::CClaim {
                claim: winners_claim,
            },
            403,
            "claim refused: wrong_key",
        );
        // Still the winner's, everywhere.
        let c = w.add_client(vec![sns[at[loser]]], false);
        let e = w.lookup(c, Target::Name(name.into())).unwrap().unwrap();
        assert_eq!(entry_user(&e, w.unix()), winner_id);
    }
    assert_service(&mut w, &sns, 3, "after the name contests");
}

// ---------------------------------------------------------------------- roles and members

/// A client session asking what only supernodes may ask, or messages only supernodes and relays
/// may send: refused (403; a supernode-to-supernode request from a non-member gets 425, "too
/// early", which a supernode the home has not heard of yet answers by trying again later) or
/// dropped, counted. A member that replicates entries it has no right to (a forged record,
/// another user's record under a different user, a record naming another supernode, an unsigned
/// name) is refused by the homes, counted, and nothing it sent reaches a lookup.
#[test]
fn wrong_roles_and_forged_replication_are_refused() {
    let (mut w, sns) = mesh(3);
    let victim = w.add_client(sns.clone(), true);
    w.run(Duration::from_secs(2));
    let victim_id = w.agent(victim).id();
    let mallory = w.fresh_identity();
    let att = w.add_attacker(mallory.clone(), true);
    let s = w.attacker_connect(att, &sns[0].0, sns[0].1);
    let record = match w.ask(att, s, &Request::CLookup(Target::Id(victim_id))) {
        Response::Entry(e) => e,
        other => panic!("{other:?}"),
    };
    // As a client: every P* request is refused.
    let entry = record.clone();
    let p_requests = vec![
        Request::PStore {
            user: victim_id,
            entry: entry.clone(),
        },
        Request::PFetch(victim_id),
        Request::PFetchName("alice".into()),
        Request::PWatch {
            user: victim_id,
            watcher: mallory.id(),
        },
        Request::PUnwatch {
            user: victim_id,
            watcher: mallory.id(),
        },
        Request::PForward {
            from: mallory.id(),
            to: victim_id,
            payload: b"x".to_vec(),
        },
        Request::PClaim {
            claim: claim(&mallory, 1, "mallory", w.unix(), 3600),
        },
        Request::PClaimStore {
            claim: claim(&mallory, 1, "mallory", w.unix(), 3600),
            orderer: sns[0].0.id,
            order: 0,
            received_at: 0,
        },
    ];
    for req in &p_requests {
        expect_refusal(
            &mut w,
            att,
            s,
            0,
            req,
            425,
            "supernode request from a non-member",
        );
    }
    for (req, reason) in [
        (Request::CRefresh, "not registered here"),
        (
            Request::CRoute {
                to: victim_id,
                payload: b"x".to_vec(),
            },
            "register before routing",
        ),
    ] {
        expect_refusal(&mut w, att, s, 0, &req, 403, reason);
    }
    // Messages only a member or a relay may send.
    let before = refused(&w, 0, "unexpected message");
    let now = w.now;
    for m in [
        signal::Message::Presence {
            user: victim_id,
            online: false,
            last_seen: 0,
            stale: true,
        },
        signal::Message::PrimaryLost {
            primary: sns[1].0.id,
        },
        signal::Message::Deliver {
            from: victim_id,
            payload: vec![1],
        },
        signal::Message::RLoad { allocations: 7 },
    ] {
        w.attacker(att)
            .ep
            .send(now, s, &signal::encode(&m))
            .unwrap();
    }
    w.run(Duration::from_millis(100));
    assert_eq!(
        refused(&w, 0, "unexpected message"),
        before + 4,
        "{:?}",
        w.refusals()
    );

    // Now Mallory joins as a member (she has a key of her own, so she may) and replicates lies.
    let me = w.attacker_member(att);
    let seed = Member {
        id: sns[0].0.id,
        noise: sns[0].0.noise,
        addr: sns[0].1,
        generation: 0,
    };
    w.attacker_joins(att, me, Some(seed));
    w.run(Duration::from_secs(6));
    assert_eq!(w.sn(0).members().len(), 4);
    let mut forged = entry.clone();
    let mut bytes = forged.record.to_vec();
    *bytes.last_mut().unwrap() ^= 1;
    forged.record = bytes.into();
    let mut elsewhere = entry.clone();
    elsewhere.via = mallory.id();
    let mut named = entry.clone();
    named.name = Some("bank".into());
    let other_user = UserId([0x33; 20]);
    for (what, user, e, code, reason) in [
        (
            "forged record",
            victim_id,
            forged,
            403,
            "store refused: bad_signature",
        ),
        (
            "another user's record",
            other_user,
            entry.clone(),
            403,
            "store refused: wrong_key",
        ),
        (
            "routed through another supernode",
            victim_id,
            elsewhere,
            403,
            "store refused: via",
        ),
    ] {
        eprintln!("case: {what}");
        let before: u64 = (0..3).map(|i| refused(&w, i, reason)).sum();
        let resp = w.ask(att, s, &Request::PStore { user, entry: e });
        assert!(
            matches!(&resp, Response::Error { code: c, .. } if *c == code),
            "{what}: {resp:?}"
        );
        let after: u64 = (0..3).map(|i| refused(&w, i, reason)).sum();
        assert_eq!(after, before + 1, "{what}: counted");
    }
    // An unsigned name rides along with a valid record: accepted, but the name is dropped.
    assert_eq!(
        w.ask(
            att,
            s,
            &Request::PStore {
                user: victim_id,
                entry: named
            }
        ),
        Response::Ok
    );
    let checker = w.add_client(sns.clone(), false);
    let e = w.lookup(checker, Target::Id(victim_id)).unwrap().unwrap();
    assert_eq!(e.name, None, "a name no claim backs");
    assert_eq!(e.via, w.agent(victim).primary().unwrap().0);
    assert!(e.online);
    assert!(w.lookup(checker, Target::Id(other_user)).unwrap().is_none());
    assert_service(&mut w, &sns, 0, "after the forged replication");
}

/// A home that answers a fetch with an entry the user never signed (or one for another user)
/// does not get it to the client: the supernode checks what homes return, counts it, and asks
/// the next home.
#[test]
fn a_lying_home_cannot_hand_out_a_forged_entry() {
    let (mut w, sns) = mesh(3);
    let mallory = w.fresh_identity();
    let att = w.add_attacker(mallory.clone(), true);
    let me = w.attacker_member(att);
    let seed = Member {
        id: sns[0].0.id,
        noise: sns[0].0.noise,
        addr: sns[0].1,
        generation: 0,
    };
    w.attacker_joins(att, me, Some(seed));
    w.run(Duration::from_secs(6));
    let mut members: Vec<UserId> = sns.iter().map(|(k, _)| k.id).collect();
    members.push(mallory.id());
    // A victim whose first home is Mallory.
    let victim = (0..)
        .map(|n| identity(70_000 + n))
        .find(|i| user_homes(&i.id(), &members)[0] == mallory.id())
        .unwrap();
    let c = w.add_client_with(victim.clone(), sns.clone(), true);
    w.run(Duration::from_secs(2));
    assert!(w.agent(c).is_registered());
    let real_via = w.agent(c).primary().unwrap().0;
    // Mallory answers fetches herself from now on: with her own record dressed as the victim's.
    w.attacker(att).answer = Answer::Manual;
    w.attacker(att).requests.clear();
    // Asked through the one supernode that is not a home (a home would answer from its own copy).
    let homes = user_homes(&victim.id(), &members);
    let outsider = sns
        .iter()
        .find(|(k, _)| !homes.contains(&k.id))
        .copied()
        .unwrap();
    let asker = w.add_client(vec![outsider], false);
    w.run(Duration::from_millis(100));
    let now = w.now;
    w.agent(asker).lookup(now, Target::Id(victim.id()));
    let want = signal::encode(&Request::PFetch(victim.id()));
    let mut fetch = None;
    w.run_until(Duration::from_secs(2), |w| {
        let now = w.now;
        let a = w.attacker(att);
        for (sid, txn, body) in std::mem::take(&mut a.requests) {
            if body == want {
                fetch = Some((sid, txn));
            } else {
                let _ = a.ep.respond(now, sid, txn, &signal::encode(&Response::Ok));
            }
        }
        fetch.is_some()
    });
    let (sid, txn) = fetch.expect("the lookup reached Mallory, the first home");
    let lie = voxmesh::signal::Entry {
        record: registration(&mallory, 1, mallory.id(), w.unix(), 3600).into(),
        name: Some("victim".into()),
        online: true,
        last_seen: w.unix(),
        via: mallory.id(),
        stale: false,
    };
    let before: u64 = (0..3)
        .map(|i| refused(&w, i, "bad entry from a home"))
        .sum();
    let now = w.now;
    w.attacker(att)
        .ep
        .respond(now, sid, txn, &signal::encode(&Response::Entry(lie)))
        .unwrap();
    let mut result = None;
    w.run_until(Duration::from_secs(6), |w| {
        let evs = w.events.entry(asker).or_default();
        if let Some(i) = evs
            .iter()
            .position(|e| matches!(e, AgentEvent::Lookup { .. }))
        {
            result = Some(evs.remove(i));
            return true;
        }
        false
    });
    match result {
        Some(AgentEvent::Lookup {
            result: Ok(Some(e)),
            ..
        }) => {
            assert_eq!(entry_user(&e, w.unix()), victim.id());
            assert_eq!(e.via, real_via);
        }
        other => panic!("{other:?}"),
    }
    let after: u64 = (0..3)
        .map(|i| refused(&w, i, "bad entry from a home"))
        .sum();
    assert_eq!(after, before + 1);
    w.attacker(att).answer = Answer::Member;
    assert_service(&mut w, &sns, 0, "after the lying home");
}

/// Watches are bounded per client session: a client cannot make its supernode (and the homes)
/// keep presence subscriptions for millions of users.
#[test]
fn watches_are_bounded_per_session() {
    let (mut w, sns) = mesh(3);
    let mallory = w.fresh_identity();
    let att = w.add_attacker(mallory, false);
    let s = w.attacker_connect(att, &sns[0].0, sns[0].1);
    let mut refusals = 0;
    let mut accepted = 0;
    for n in 0..1200u32 {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&n.to_be_bytes());
        match w.ask(att, s, &Request::CWatch(UserId(b))) {
            Response::Ok => accepted += 1,
            Response::Error { code: 429, .. } => refusals += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        accepted <= 1024 && refusals >= 176,
        "{accepted} accepted, {refusals} refused"
    );
    assert!(refused(&w, 0, "too many watches") >= 176);
    assert_service(&mut w, &sns, 0, "after the watch flood");
}

// ====================================================================== the real daemons

mod real {
    //! `supernoded`, `answer`, `dial` and `relayd` on loopback. The daemons and the attacker use
    //! 127.0.0.1; honest clients 127.0.0.2 and 127.0.0.3 (other sources, as far as the rate
    //! limits can tell).

    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use voxmesh::client::{Agent, AgentConfig, AgentEvent};
    use voxmesh::identity::{BootstrapEntry, Identity, NodeKey, UserId};
    use voxmesh::session::{self, Endpoint, Event, SessionId};

    /// A child process killed (and reaped) when dropped, even when the test fails.
    pub struct Daemon(pub Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A running `supernoded`.
    pub struct Sn {
        pub daemon: Daemon,
        pub entry: BootstrapEntry,
        pub addr: SocketAddr,
        pub control: PathBuf,
    }

    /// Spawns `bin` and returns it with its first stdout line (its JSON readiness line); the
    /// rest of stdout arrives on the channel, line by line.
    pub fn spawn(
        bin: &str,
        args: &[String],
    ) -> (Daemon, serde_json::Value, mpsc::Receiver<String>) {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let daemon = Daemon(child);
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{bin} printed nothing"));
        let json =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{bin}: {e}: {line:?}"));
        (daemon, json, rx)
    }

    pub fn supernoded(dir: &Path, name: &str, extra: &[String]) -> Sn {
        let control = dir.join(format!("{name}.sock"));
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--identity".into(),
            dir.join(format!("{name}.key")).display().to_string(),
            "--host-cache".into(),
            dir.join(format!("{name}.hosts")).display().to_string(),
            "--control".into(),
            control.display().to_string(),
            "-q".into(),
        ];
        args.extend(extra.iter().cloned());
        let (daemon, json, _) = spawn(env!("CARGO_BIN_EXE_supernoded"), &args);
        let entry: BootstrapEntry = json["node"].as_str().expect("node entry").parse().unwrap();
        let addr = format!("{}:{}", entry.host, entry.port).parse().unwrap();
        Sn {
            daemon,
            entry,
            addr,
            control,
        }
    }

    /// `supernoded status --json`, through the real CLI.
    pub fn status(sn: &Sn) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_supernoded"))
            .args(["status", "--json", "--control"])
            .arg(&sn.control)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A refusal counter of the supernode core (exact reason), or the sum over reasons that
    /// start with `prefix*`.
    pub fn refused_in(v: &serde_json::Value, reason: &str) -> u64 {
        let map = v["counters"]["refused"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        match reason.strip_suffix('*') {
            Some(prefix) => map
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, n)| n.as_u64().unwrap())
                .sum(),
            None => map.get(reason).and_then(|n| n.as_u64()).unwrap_or(0),
        }
    }

    /// A session-layer counter (`refused_bad_mac1`, `cookies_sent`, ...).
    pub fn session(v: &serde_json::Value, name: &str) -> u64 {
        v["session_counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    }

    /// Resident set (KiB) and CPU time used so far (user + system) of a process.
    pub fn proc_usage(pid: u32) -> (u64, Duration) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces, so split after its ')').
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        (rss, Duration::from_millis(ticks * 1000 / hz))
    }

    /// `answer` for a fresh identity in `dir`, bound to `ip`: (process, user ID, its JSON lines).
    pub fn answer(
        dir: &Path,
        name: &str,
        entry: &str,
        ip: &str,
    ) -> (Daemon, UserId, mpsc::Receiver<String>) {
        let key = dir.join(format!("{name}.key"));
        let id = Identity::generate();
        id.save_new(&key).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_answer"))
            .args([
                "--supernode",
                entry,
                "--bind",
                &format!("{ip}:0"),
                "-q",
                "--identity",
            ])
            .arg(&key)
            .arg("--host-cache")
            .arg(dir.join(format!("{name}.hosts")))
            .arg("--contacts")
            .arg(dir.join("no-contacts"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn answer");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (Daemon(child), id.id(), rx)
    }

    /// Waits (bounded) for a JSON line with `"event": event`; returns it.
    pub fn wait_event(
        rx: &mpsc::Receiver<String>,
        event: &str,
        limit: Duration,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = rx.recv_timeout(left).ok()?;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"] == event {
                return Some(v);
            }
        }
    }

    /// `dial --lookup USER` from `ip`: (exit code, stdout, stderr).
    pub fn dial(
        dir: &Path,
        entry: &str,
        user: &str,
        ip: &str,
        timeout: u64,
    ) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_dial"))
            .args([
                "--lookup",
                user,
                "--supernode",
                entry,
                "--bind",
                &format!("{ip}:0"),
                "-q",
            ])
            .args(["--timeout", &timeout.to_string(), "--identity"])
            .arg(dir.join(format!("dial-{ip}.key")))
            .arg("--host-cache")
            .arg(dir.join(format!("dial-{ip}.hosts")))
            .arg("--contacts")
            .arg(dir.join("no-contacts"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// The service is unharmed: an `answer` from 127.0.0.2 registers, `dial` from 127.0.0.3
    /// finds it online, and it finds the `dial` side's... (dial does not register: it looks up).
    #[track_caller]
    pub fn assert_served(dir: &Path, sn: &Sn, what: &str) {
        let entry = sn.entry.to_string();
        let name = format!("honest-{}", what.replace(' ', "-"));
        let (_a, id, rx) = answer(dir, &name, &entry, "127.0.0.2");
        assert!(
            wait_event(&rx, "registered", Duration::from_secs(10)).is_some(),
            "{what}: an honest client did not register"
        );
        let (code, out, err) = dial(dir, &entry, &id.to_string(), "127.0.0.3", 10);
        assert_eq!(code, 0, "{what}: dial: {out} {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["online"], true);
    }

    /// A bare session endpoint on a blocking UDP socket, driven by the test.
    pub struct RawClient {
        pub ep: Endpoint,
        pub sock: UdpSocket,
        pub events: Vec<Event>,
    }

    impl RawClient {
        pub fn new(identity: &Identity, ip: &str) -> RawClient {
            let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
            let ep = Endpoint::new(
                session::Config::client(),
                identity,
                Instant::now(),
                rand::random(),
            );
            RawClient {
                ep,
                sock,
                events: Vec::new(),
            }
        }

        /// Sends what is queued, receives for up to `max` (or until `done`), runs timers.
        pub fn drive(
            &mut self,
            max: Duration,
            mut done: impl FnMut(&mut RawClient) -> bool,
        ) -> bool {
            let deadline = Instant::now() + max;
            let mut buf = vec![0u8; 2048];
            loop {
                while let Some(t) = self.ep.poll_transmit() {
                    let _ = self.sock.send_to(&t.data, t.to);
                }
                while let Some(e) = self.ep.poll_event() {
                    self.events.push(e);
                }
                if done(self) {
                    return true;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                let until = self.ep.poll_timeout().map_or(deadline, |t| t.min(deadline));
                let wait = until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                self.sock.set_read_timeout(Some(wait)).unwrap();
                if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                    self.ep.handle_input(Instant::now(), from, &buf[..n]);
                }
                let now = Instant::now();
                if self.ep.poll_timeout().is_some_and(|t| t <= now) {
                    self.ep.handle_timeout(now);
                }
            }
        }

        #[track_caller]
        pub fn connect(&mut self, key: &NodeKey, addr: SocketAddr) -> SessionId {
            let s = self.ep.connect(Instant::now(), addr, key).unwrap();
            let up = self.drive(Duration::from_secs(5), |c| c.ep.is_established(s));
            assert!(up, "no session with {addr}");
            s
        }

        /// Sends `body` as a request and waits for the answer's body.
        #[track_caller]
        pub fn ask(&mut self, s: SessionId, body: &[u8]) -> Vec<u8> {
            let txn = self.ep.request(Instant::now(), s, body).unwrap();
            let mut got = None;
            self.drive(Duration::from_secs(8), |c| {
                if let Some(i) = c
                    .events
                    .iter()
                    .position(|e| matches!(e, Event::Response { txn: t, .. } if *t == txn))
                {
                    if let Event::Response { body, .. } = c.events.remove(i) {
                        got = Some(body);
                    }
                    return true;
                }
                false
            });
            got.expect("an answer")
        }
    }

    /// A client agent on a blocking socket in the test's thread (the core is sans-IO).
    pub fn drive_agent(
        agent: &mut Agent,
        sock: &UdpSocket,
        max: Duration,
        mut want: impl FnMut(&AgentEvent) -> bool,
    ) -> Option<AgentEvent> {
        let deadline = Instant::now() + max;
        let mut buf = vec![0u8; 2048];
        loop {
            while let Some(t) = agent.poll_transmit() {
                let _ = sock.send_to(&t.data, t.to);
            }
            while let Some(e) = agent.poll_event() {
                if want(&e) {
                    return Some(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let until = agent.poll_timeout().map_or(deadline, |t| t.min(deadline));
            sock.set_read_timeout(Some(
                until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                agent.handle_input(Instant::now(), from, &buf[..n]);
            }
            let now = Instant::now();
            if agent.poll_timeout().is_some_and(|t| t <= now) {
                agent.handle_timeout(now);
            }
        }
    }

    /// A registered agent at `sn`, bound to `ip`.
    pub fn agent_at(sn: &Sn, ip: &str) -> (Agent, UdpSocket) {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        let unix = voxmesh::identity::Timestamp::now().0;
        let mut cfg = AgentConfig::new(vec![(sn.entry.key, sn.addr)]);
        cfg.standby = false;
        let mut agent = Agent::new(
            Identity::generate(),
            cfg,
            Instant::now(),
            unix,
            rand::random(),
        );
        let reg = drive_agent(&mut agent, &sock, Duration::from_secs(10), |e| {
            matches!(e, AgentEvent::Registered { .. })
        });
        assert!(reg.is_some(), "no registration at {}", sn.addr);
        (agent, sock)
    }
}

use crate::support::relayd as relayd_support;

use real::*;
use voxmesh::session::crypto::initiation_frame;
use voxmesh::session::wire;

/// Thousands of distinct, valid handshake initiations from one UDP socket against the real
/// daemon, as fast as it takes them, while an honest client from another address registers. The
/// daemon answers the flood with cookies (62 bytes, smaller than what it got: no amplification),
/// does the handshake work for only a handful, its memory and CPU stay bounded, and honest
/// clients register and look each other up during and after the flood.
#[test]
fn a_handshake_flood_from_one_source_against_the_real_supernode() {
    const FLOOD: u32 = 6000;
    let dir = tempfile::tempdir().unwrap();
    let sn = supernoded(dir.path(), "sn", &[]);
    let pid = sn.daemon.0.id();
    let entry = sn.entry.to_string();
    // The attacker knows the key (it is public), so every initiation passes mac1.
    let attacker = Identity::generate();
    let t_build = std::time::Instant::now();
    let frames: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| initiation_frame(&attacker, &sn.entry.key, i + 1))
        .collect();
    eprintln!("built {FLOOD} initiations in {:?}", t_build.elapsed());
    let before = status(&sn);
    let (rss0, cpu0) = proc_usage(pid);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    // An honest client starts in the middle of the flood.
    let (mut replies, mut reply_bytes, mut largest) = (0u64, 0u64, 0usize);
    let mut kinds = std::collections::BTreeMap::new();
    let mut honest = None;
    let mut buf = [0u8; 2048];
    let t0 = std::time::Instant::now();
    for (i, f) in frames.iter().enumerate() {
        // At most ~3 s: pace to 2,000 initiations a second, twice the daemon's global budget.
        while t0.elapsed() < Duration::from_micros(500 * i as u64) {
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = sock.send_to(f, sn.addr);
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            replies += 1;
            reply_bytes += n as u64;
            largest = largest.max(n);
            *kinds.entry(buf[0]).or_insert(0u64) += 1;
        }
        if i == FLOOD as usize / 2 {
            honest = Some(answer(dir.path(), "during", &entry, "127.0.0.2"));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the flood is bounded in time"
        );
    }
    let flood_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        replies += 1;
        reply_bytes += n as u64;
        largest = largest.max(n);
        *kinds.entry(buf[0]).or_insert(0u64) += 1;
    }
    let (rss1, cpu1) = proc_usage(pid);
    let after = status(&sn);
    let cookies = session(&after, "cookies_sent") - session(&before, "cookies_sent");
    let answered = session(&after, "handshakes_answered") - session(&before, "handshakes_answered");
    let limited =
        session(&after, "refused_rate_limited") - session(&before, "refused_rate_limited");
    eprintln!(
        "flood: {FLOOD} initiations in {flood_time:?}; {replies} replies ({reply_bytes} bytes, largest {largest}, by type {kinds:?}); \
         daemon: {cookies} cookies, {answered} handshakes answered, {limited} rate-limited; \
         RSS {rss0} -> {rss1} KiB, CPU {:?}",
        cpu1 - cpu0
    );
    // No amplification: nothing sent back is as large as an initiation.
    assert!(largest < wire::INIT_LEN, "{largest}");
    assert!(reply_bytes < FLOOD as u64 * wire::INIT_LEN as u64);
    // The daemon did the expensive work for a handful only (the per-source burst and rate, the
    // honest clients), and cookied or dropped the rest.
    let secs = flood_time.as_secs_f64() + 1.0;
    assert!(
        answered as f64 <= 8.0 + 4.0 * secs + 10.0,
        "{answered} handshakes answered"
    );
    assert!(
        cookies + limited >= FLOOD as u64 / 2,
        "{cookies} cookies, {limited} rate limited"
    );
    // Bounded memory and CPU.
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(
        cpu1 - cpu0 < Duration::from_secs(5),
        "CPU {:?}",
        cpu1 - cpu0
    );
    // The client that started during the flood registered; another one after it does too, and
    // they find each other.
    let (_d, _id, rx) = honest.unwrap();
    assert!(
        wait_event(&rx, "registered", Duration::from_secs(10)).is_some(),
        "no registration during the flood"
    );
    assert_served(dir.path(), &sn, "after the flood");
    // Sessions: the honest ones, and the attacker's few answered handshakes until their
    // confirmation times out.
    let v = status(&sn);
    assert!(
        v["sessions"].as_u64().unwrap() <= answered + 6,
        "{}",
        v["sessions"]
    );
}

/// Inside an authenticated session with the real daemon: requests that do not decode (empty,
/// another version, truncated, absurd lengths, a frame's worth of garbage), requests a client may
/// not make (P* and relay requests, routing before registering, an invalid name), messages only
/// supernodes send, and oversized datagrams. Each request is answered with an error code; each
/// one is counted in `supernoded status --json`; the daemon serves honest clients afterwards.
#[test]
fn malformed_and_wrong_role_messages_against_the_real_supernode() {
    use voxmesh::signal::{self, Entry, Message, Request, Response, Target};
    let dir = tempfile::tempdir().unwrap();
    let sn = supernoded(dir.path(), "sn", &[]);
    let before = status(&sn);
    let me = Identity::generate();
    let mut c = RawClient::new(&me, "127.0.0.1");
    let s = c.connect(&sn.entry.key, sn.addr);
    let max = c.ep.config().max_body();
    let mut absurd_len = vec![signal::VERSION, 0];
    absurd_len.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut truncated = signal::encode(&Request::CLookup(Target::Name("someone".into())));
    truncated.truncate(truncated.len() - 3);
    let mut frame_of_garbage = vec![signal::VERSION];
    frame_of_garbage.extend((0..max - 1).map(|i| (i * 7 + 3) as u8));
    let undecodable: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("another version", vec![9, 0]),
        ("unknown variant", vec![signal::VERSION, 200]),
        ("truncated", truncated),
        ("a length of 4 GiB", absurd_len),
        ("a frame of garbage", frame_of_garbage),
    ];
    for (what, body) in &undecodable {
        let r: Response = signal::decode(&c.ask(s, body)).unwrap();
        assert!(
            matches!(&r, Response::Error { code: 400, reason } if reason.starts_with("bad request")),
            "{what}: {r:?}"
        );
    }
    let entry = Entry {
        record: vec![1; 100].into(),
        name: None,
        online: true,
        last_seen: 0,
        via: me.id(),
        stale: false,
    };
    let wrong_role = vec![
        (
            Request::PStore {
                user: me.id(),
                entry,
            },
            425,
        ),
        (Request::PFetch(me.id()), 425),
        (
            Request::PClaimStore {
                claim: vec![1],
                orderer: me.id(),
                order: 0,
                received_at: 0,
            },
            425,
        ),
        (
            Request::PForward {
                from: me.id(),
                to: me.id(),
                payload: vec![0; 900],
            },
            425,
        ),
        (
            Request::RHello {
                udp: vec![],
                tcp: vec![],
                tls: vec![],
                realm: String::new(),
                secret: vec![],
                load: 0,
            },
            400,
        ),
        (
            Request::CRoute {
                to: me.id(),
                payload: vec![1],
            },
            403,
        ),
        (Request::CRefresh, 403),
        (Request::CLookup(Target::Name("Not A Name!".into())), 400),
        (
            Request::CRegister {
                record: vec![0; 800],
            },
            403,
        ),
    ];
    for (req, code) in &wrong_role {
        let r: Response = signal::decode(&c.ask(s, &signal::encode(req))).unwrap();
        assert!(
            matches!(&r, Response::Error { code: c, .. } if c == code),
            "{req:?}: {r:?}"
        );
    }
    // Messages a client may not send, and one that does not decode: no answer, only counting.
    let now = Instant::now();
    for m in [
        signal::encode(&Message::Presence {
            user: me.id(),
            online: true,
            last_seen: 0,
            stale: false,
        }),
        signal::encode(&Message::PrimaryLost { primary: me.id() }),
        signal::encode(&Message::RLoad { allocations: 1 }),
        vec![signal::VERSION, 77, 1, 2],
    ] {
        c.ep.send(now, s, &m).unwrap();
    }
    c.drive(Duration::from_millis(300), |_| false);
    // Oversized datagrams (the session layer refuses them before anything else).
    for _ in 0..3 {
        c.sock.send_to(&[wire::TRANSPORT; 2000], sn.addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = status(&sn);
    let diff = |reason: &str| refused_in(&after, reason) - refused_in(&before, reason);
    assert_eq!(diff("bad request"), undecodable.len() as u64, "{after}");
    assert_eq!(diff("supernode request from a non-member"), 4);
    assert_eq!(diff("relay secret must be 1..=256 bytes"), 1);
    assert_eq!(diff("register before routing"), 1);
    assert_eq!(diff("not registered here"), 1);
    assert_eq!(diff("invalid name"), 1);
    assert_eq!(diff("registration refused:*"), 1);
    assert_eq!(diff("unexpected message"), 3);
    assert_eq!(diff("malformed message"), 1);
    assert_eq!(
        session(&after, "refused_oversized") - session(&before, "refused_oversized"),
        3
    );
    // The session itself is still fine, and so is the service.
    let r: Response = signal::decode(&c.ask(s, &signal::encode(&Request::CMembers))).unwrap();
    assert!(matches!(r, Response::Members(m) if m.len() == 1));
    assert_served(dir.path(), &sn, "after the malformed messages");
}

/// Wrong keys end to end with the real programs: `answer` given an entry whose ID is not the
/// supernode's reports the mismatch as an error event and never registers; `dial` says why no
/// supernode answered; a `supernoded` bootstrapping from a wrong entry (wrong ID, or a Noise key
/// nobody holds) stays alone, and the refusal is counted.
#[test]
fn wrong_keys_against_the_real_supernode() {
    let dir = tempfile::tempdir().unwrap();
    let a = supernoded(dir.path(), "a", &[]);
    let other = Identity::generate();
    let wrong_id = format!(
        "{}@{}",
        NodeKey {
            id: other.id(),
            noise: a.entry.key.noise
        },
        a.addr
    );
    let unknown_noise = format!(
        "{}@{}",
        NodeKey {
            id: a.entry.key.id,
            noise: [5; 32]
        },
        a.addr
    );

    let (_c, _, rx) = answer(dir.path(), "wrong", &wrong_id, "127.0.0.2");
    let err = wait_event(&rx, "error", Duration::from_secs(5)).expect("an error event");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "the responder is {}, not {}",
            a.entry.key.id,
            other.id()
        )),
        "{msg}"
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            assert!(
                !line.contains("\"registered\""),
                "registered with a wrong key: {line}"
            );
        }
    }
    let (code, _, stderr) = dial(
        dir.path(),
        &wrong_id,
        &other.id().to_string(),
        "127.0.0.3",
        3,
    );
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("the responder is"), "{stderr}");

    let bad_mac_before = session(&status(&a), "refused_bad_mac1");
    let b = supernoded(dir.path(), "b", &["--bootstrap".into(), wrong_id.clone()]);
    let c = supernoded(dir.path(), "c", &["--bootstrap".into(), unknown_noise]);
    std::thread::sleep(Duration::from_secs(4));
    for sn in [&a, &b, &c] {
        let v = status(sn);
        assert_eq!(v["members"].as_array().unwrap().len(), 1, "{v}");
    }
    assert!(session(&status(&b), "refused_identity_mismatch") >= 1);
    assert!(session(&status(&a), "refused_bad_mac1") > bad_mac_before);
    assert_served(dir.path(), &a, "after the wrong keys");
}

/// A supernode minting credentials for a relay that never authorised it (DESIGN §5: one secret
/// per relay and supernode, the supernode's ID in the username). Supernode X, a member of the
/// same mesh as the relay's supernode Y, mints `EXPIRY:X:USER` with a secret of its own: the
/// relay answers 401 and counts an authentication failure; X hands its clients no offer for the
/// relay; Y's client is served throughout. (`tests/loopback/relay_directory.rs` covers credentials
/// altered in any part and a supernode outside the mesh.)
#[test]
fn a_supernode_cannot_mint_credentials_for_a_relay_that_never_authorised_it() {
    use relayd_support::{Good, Raw, Relayd, udp_transport};
    use voxmesh::stun::method;
    use voxmesh::turn::rest_password;
    let dir = tempfile::tempdir().unwrap();
    let y = supernoded(dir.path(), "y", &[]);
    let x = supernoded(
        dir.path(),
        "x",
        &["--bootstrap".into(), y.entry.to_string()],
    );
    let relay_key = dir.path().join("relay.key");
    let relay = Relayd::start_with(
        (47600, 47699),
        &[
            "--supernode",
            &y.entry.to_string(),
            "--identity",
            relay_key.to_str().unwrap(),
        ],
        false,
    );
    let (mut agent_y, sock_y) = agent_at(&y, "127.0.0.2");
    let (mut agent_x, sock_x) = agent_at(&x, "127.0.0.3");
    // Y gets the relay's hello shortly after both start.
    let deadline = Instant::now() + Duration::from_secs(15);
    let offer = loop {
        agent_y.relays(Instant::now());
        if let Some(AgentEvent::Relays(Ok(o))) =
            drive_agent(&mut agent_y, &sock_y, Duration::from_secs(2), |e| {
                matches!(e, AgentEvent::Relays(_))
            })
            && let Some(first) = o.into_iter().next()
        {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never reached supernode y"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(offer.username.contains(&y.entry.key.id.to_string()));
    // X knows the relay only as a mesh member's business: it offers nothing for it.
    agent_x.relays(Instant::now());
    match drive_agent(&mut agent_x, &sock_x, Duration::from_secs(5), |e| {
        matches!(e, AgentEvent::Relays(_))
    }) {
        Some(AgentEvent::Relays(Ok(o))) => assert!(o.is_empty(), "{o:?}"),
        other => panic!("{other:?}"),
    }
    // X mints anyway, with a secret of its own, for one of its users.
    const FAILURES: &str = r#"voxmesh_turn_auth_total{result="failure"}"#;
    let failures = |m: &relayd_support::Metrics| m.get(FAILURES);
    let before = failures(&relay.metrics());
    let expiry = voxmesh::identity::Timestamp::now().0 + 600;
    let forged_user = format!("{expiry}:{}:{}", x.entry.key.id, agent_x.id());
    for secret in [b"x-made-this-up".as_slice(), b"", offer.password.as_bytes()] {
        let password = rest_password(secret, &forged_user);
        let mut raw = Raw::bind("127.0.0.1", relay.udp);
        raw.call(method::ALLOCATE, (&forged_user, &password), udp_transport)
            .expect_error(401, "");
    }
    // Y's own offer, relabelled as X's: the password is bound to the username.
    let relabelled = offer
        .username
        .replace(&y.entry.key.id.to_string(), &x.entry.key.id.to_string());
    let mut raw = Raw::bind("127.0.0.1", relay.udp);
    raw.call(
        method::ALLOCATE,
        (&relabelled, &offer.password),
        udp_transport,
    )
    .expect_error(401, "");
    let after = failures(&relay.wait_metric(FAILURES, before + 4.0));
    assert!(after >= before + 4.0, "auth failures {before} -> {after}");
    // Y's client is served.
    let mut good = Good::new(
        "127.0.0.1",
        relay.udp,
        (&offer.username, &offer.password),
        false,
    );
    let relayed = good.allocate();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
}
