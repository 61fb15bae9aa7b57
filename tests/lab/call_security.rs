//! What the network sees of a call, checked on captured packets (`voxlab::capture`).
//! - A relayed call (symmetric ↔ symmetric) whose parties sit on two supernodes of one mesh: a
//!   capture of the server namespace (both supernodes and the relay) holds no plaintext audio and
//!   no Opus packet a decoder could play, although the same detector finds the caller's tone in
//!   plaintext Opus packets of the same signal (its positive control); both ends show one SAS.
//! - A stranger's call (caller behind a symmetric NAT, callee behind a full cone): before the
//!   callee accepts, no packet from any of the callee's addresses reaches the caller's NAT (the
//!   same capture sees them once the call goes direct); media packets replayed, tampered with
//!   or forged by a third party at the callee's public address are dropped and counted in its
//!   `stats`.

use crate::support::calls::{Answerer, json_lines, wait_event};
use crate::support::calls::{CallLab, Dialled, RELAY, SN, read_wav, tone};
use crate::support::common::Proc;
use crate::support::mesh_proc::{Sn, rt, start_supernode};

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use voxlab::capture::{Capture, Packet, Proto};
use voxlab::{BoxOpts, Lab, LabNat};
use voxmesh::media::codec::{Decoder, Encoded, Encoder, OpusSettings};
use voxmesh::net::drivers::supernode::query_status;

const CALLER_HZ: f64 = 440.0;

/// Share of the power of one decoded frame at `hz` (Goertzel-style projection): near 1 for a
/// frame of that tone, near 0 for noise.
fn frame_tone_share(pcm: &[f32], hz: f64) -> f64 {
    let (mut c, mut s, mut total) = (0.0, 0.0, 0.0);
    for (i, &x) in pcm.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0;
        c += x as f64 * ph.cos();
        s += x as f64 * ph.sin();
        total += x as f64 * x as f64;
    }
    2.0 * (c * c + s * s) / pcm.len().max(1) as f64 / total.max(1e-12)
}

/// Where an Opus packet could start in a datagram or segment: bare, after a ChannelData header
/// (4), an RTP-style media header (12), both (16), or a TURN Data indication's header,
/// XOR-PEER-ADDRESS and DATA attribute header (20 + 12 + 4 for IPv4).
const OFFSETS: [usize; 5] = [0, 4, 12, 16, 36];

/// The flows (source, destination, offset) in which a listener on the wire could hear the
/// caller's tone: decoded in order with one decoder per flow, at least 10 frames are the tone at
/// its level. A random packet decodes to a tone-like frame now and then; ten in one flow do not
/// happen by chance.
fn audible_flows<'a>(packets: impl Iterator<Item = (SocketAddr, SocketAddr, &'a [u8])>) -> usize {
    let mut flows: HashMap<(SocketAddr, SocketAddr, usize), (Decoder, usize)> = HashMap::new();
    let mut pcm = Vec::new();
    for (src, dst, p) in packets {
        for off in OFFSETS {
            let Some(body) = p.get(off..).filter(|b| b.len() > 2) else {
                continue;
            };
            let (dec, hits) = flows
                .entry((src, dst, off))
                .or_insert_with(|| (Decoder::new().unwrap(), 0));
            pcm.clear();
            if dec.decode(body, &mut pcm).is_ok() && pcm.len() >= 480 {
                let rms = (pcm.iter().map(|&x| x * x).sum::<f32>() / pcm.len() as f32).sqrt();
                if frame_tone_share(&pcm, CALLER_HZ) > 0.8 && (0.1..0.4).contains(&rms) {
                    *hits += 1;
                }
            }
        }
    }
    flows.values().filter(|(_, hits)| *hits >= 10).count()
}

/// The caller's signal as plaintext media on the wire would carry it: the product's encoder,
/// each packet behind a ChannelData and a media header (the detector's positive control).
fn plaintext_packets(pcm: &[f32]) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(OpusSettings::default()).unwrap();
    let mut out = Vec::new();
    for (seq, frame) in pcm.chunks_exact(960).enumerate() {
        if let Encoded::Packet(p) = enc.encode(frame).unwrap() {
            let mut d = vec![0x40, 0x00];
            d.extend(((12 + p.len()) as u16).to_be_bytes());
            d.extend([0x80, 111]);
            d.extend((seq as u16).to_be_bytes());
            d.extend([0u8; 8]);
            d.extend_from_slice(p);
            out.push(d);
        }
    }
    out
}

/// Whether any 16-byte run of `pcm_bytes` (at a sample boundary) occurs in `payload`.
fn holds_pcm(windows: &HashSet<&[u8]>, payload: &[u8]) -> bool {
    payload.windows(16).any(|w| windows.contains(w))
}

fn ip_of(s: &str) -> IpAddr {
    s.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn a_relayed_call_shows_the_network_ciphertext_only() {
    let test = "call_ciphertext_only";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::Symmetric)),
            (2, BoxOpts::new(LabNat::Symmetric)),
        ],
        "sec-relay",
    );
    // A second supernode in the mesh: the caller registers there, the callee on the first.
    let sn2 = start_supernode(
        m.lab
            .command(&m.lab.server_ns(), env!("CARGO_BIN_EXE_supernoded")),
        "198.51.100.1:3479".parse().unwrap(),
        &m.dir,
        2,
        Some(&m.node),
    );
    let sn2_entry = format!("{}@{}", sn2.key, sn2.addr);
    wait_mesh_of_two(&m, &sn2);

    let a_wav = m.dir.join("a.wav");
    tone(&a_wav, CALLER_HZ, 3.0);
    tone(&m.dir.join("b.wav"), 660.0, 6.0);
    let f = |n: &str| m.dir.join(n).to_str().unwrap().to_string();
    let mut bob = m.answer(
        &m.host_ns(2, 0),
        "bob",
        &[
            "--auto",
            "--play",
            &f("b.wav"),
            "--record",
            &f("at-bob.wav"),
        ],
    );
    let cap = Capture::start(&m.lab.server_ns()).unwrap();
    let mut dial = m.dial(
        &m.host_ns(1, 0),
        "alice",
        &bob.id,
        &["--play", &f("a.wav"), "--record", &f("at-alice.wav")],
    );
    // The caller's own supernode: the second one (its -s comes last and wins).
    dial.args(["-s", &sn2_entry]);
    let d = Dialled::run(dial);
    let packets = cap.stop().unwrap();
    assert_eq!(d.code, Some(0), "dial: {:#?}", d.events);
    let connected = d.event("connected").expect("connected").clone();
    assert_eq!(connected["path"], "relayed", "{connected}");
    bob.wait("ended", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the callee sees the end: {:#?}", bob.seen));
    let bob_connected = bob.seen("connected").expect("the callee connects").clone();
    assert_eq!(bob_connected["sas"], connected["sas"], "both show one SAS");
    assert!(connected["sas"].as_str().is_some_and(|s| !s.is_empty()));

    // The capture saw the call: media both ways through the relay, signalling at both
    // supernodes.
    let relay: SocketAddr = RELAY.parse().unwrap();
    let through_relay = packets
        .iter()
        .filter(|p| p.src.ip() == relay.ip() || p.dst.ip() == relay.ip())
        .count();
    let at = |addr: SocketAddr| {
        packets
            .iter()
            .filter(|p| p.src == addr || p.dst == addr)
            .count()
    };
    let sn1_addr: SocketAddr = SN.parse().unwrap();
    assert!(
        through_relay > 100,
        "the capture holds the relayed media ({through_relay} packets at the relay)"
    );
    assert!(
        at(sn1_addr) > 0 && at(sn2.addr) > 0,
        "signalling at both supernodes: {} and {}",
        at(sn1_addr),
        at(sn2.addr)
    );

    // No plaintext PCM of the caller's file anywhere.
    let sent = read_wav(&a_wav);
    let pcm_bytes: Vec<u8> = sent
        .iter()
        .flat_map(|&x| ((x * 32768.0) as i16).to_le_bytes())
        .collect();
    let windows: HashSet<&[u8]> = pcm_bytes.windows(16).step_by(2).collect();
    let with_pcm = packets
        .iter()
        .filter(|p| holds_pcm(&windows, &p.payload))
        .count();
    assert_eq!(with_pcm, 0, "packets holding the caller's raw PCM");

    // The detector finds the tone in plaintext Opus packets of the same signal...
    let control = plaintext_packets(&sent);
    let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:1".parse().unwrap(), relay);
    assert_eq!(
        audible_flows(control.iter().map(|p| (a, b, p.as_slice()))),
        1,
        "the detector hears plaintext Opus of the caller's tone"
    );
    // ...and none in what the relay and the supernodes carried.
    let heard = audible_flows(packets.iter().map(|p| (p.src, p.dst, p.payload.as_slice())));
    assert_eq!(heard, 0, "flows of the capture that play the caller's tone");
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// Waits (bounded) until both supernodes list two members.
fn wait_mesh_of_two(m: &CallLab, sn2: &Sn) {
    let members = |control: &Path| {
        rt().block_on(query_status(control, false))
            .ok()
            .and_then(|v| v["members"].as_array().map(Vec::len))
    };
    let t0 = Instant::now();
    while members(&m.dir.join("sn.sock")) != Some(2) || members(&sn2.control) != Some(2) {
        // The mesh's join is one request and its answer, retransmitted on the session's
        // schedule: seconds at most.
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the mesh did not form"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stranger_sees_no_callee_address_before_accept_and_injected_media_is_counted() {
    let test = "call_privacy_and_injection";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::Symmetric)),
            (2, BoxOpts::new(LabNat::FullCone)),
        ],
        "sec-privacy",
    );
    let callee_box = m.lab.boxes().iter().find(|b| b.index == 2).unwrap().clone();
    let caller_box = m.lab.boxes().iter().find(|b| b.index == 1).unwrap().clone();
    let callee_ips: Vec<IpAddr> = [
        ip_of(&callee_box.wan4),
        ip_of(&callee_box.wan6),
        ip_of(&callee_box.hosts[0].ip4),
        ip_of(&callee_box.hosts[0].ip6),
    ]
    .into();
    let f = |n: &str| m.dir.join(n).to_str().unwrap().to_string();
    tone(&m.dir.join("a.wav"), CALLER_HZ, 10.0);
    tone(&m.dir.join("b.wav"), 660.0, 12.0);
    // Rings until told to accept on its control stream (stdin).
    let mut bob = m.answer(
        &m.host_ns(2, 0),
        "bob",
        &["--control", "-", "--play", &f("b.wav")],
    );
    let caller_cap = Capture::start(caller_box.nat_ns.as_deref().unwrap()).unwrap();
    let callee_cap = Capture::start(callee_box.nat_ns.as_deref().unwrap()).unwrap();
    let dial = m
        .dial(&m.host_ns(1, 0), "alice", &bob.id, &["--play", &f("a.wav")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut dial = Proc {
        child: dial,
        name: "dial",
    };
    let dial_rx = json_lines(&mut dial.child);
    bob.wait("incoming", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the callee rings: {:#?}", bob.seen));
    // Let the call ring long enough for any early check or trickled address to show.
    let mut dial_seen = Vec::new();
    wait_event(&dial_rx, "ringing", Duration::from_secs(5), &mut dial_seen)
        .unwrap_or_else(|| panic!("the caller hears ringing: {dial_seen:#?}"));
    std::thread::sleep(Duration::from_millis(1500));
    let accepted_at = Instant::now();
    let stdin = bob.proc.child.stdin.as_mut().unwrap();
    writeln!(stdin, r#"{{"cmd":"accept"}}"#).unwrap();
    stdin.flush().unwrap();
    let connected = bob
        .wait("connected", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the call connects: {:#?}", bob.seen));
    // The direct path follows the accept (addresses were withheld until then).
    let direct = connected["path"] == "direct"
        || bob
            .wait("path", Duration::from_secs(10))
            .is_some_and(|p| p["path"] == "direct");
    assert!(direct, "the call goes direct after accept: {:#?}", bob.seen);

    // Before the accept, nothing from any address of the callee reached the caller's NAT; once
    // the call went direct, the same capture saw the callee's packets.
    let at_caller = caller_cap.stop().unwrap();
    let from_callee = |p: &&Packet| callee_ips.contains(&p.src.ip());
    let early: Vec<&Packet> = at_caller
        .iter()
        .filter(from_callee)
        .filter(|p| p.at < accepted_at)
        .collect();
    assert!(
        early.is_empty(),
        "the stranger saw the callee's address before accept: {:?}",
        early.iter().map(|p| (p.src, p.dst)).collect::<Vec<_>>()
    );
    assert!(
        at_caller.iter().filter(from_callee).count() > 0,
        "the capture at the caller's NAT sees the callee once the call is direct"
    );

    // Third-party packets at the callee's public address: a replay, a tampered copy and a
    // forgery of a media packet the caller sent there.
    let callee_wan = ip_of(&callee_box.wan4);
    let relay_ip: SocketAddr = RELAY.parse().unwrap();
    let original = callee_cap
        .snapshot()
        .into_iter()
        .rev()
        .find(|p| {
            p.proto == Proto::Udp
                && p.dst.ip() == callee_wan
                && p.src.ip() != relay_ip.ip()
                && (128..=191).contains(&p.payload[0])
                && p.payload.len() > 28
        })
        .expect("the callee's NAT saw direct media from the caller");
    drop(callee_cap);
    let before = stats(&mut bob);
    // The header is authenticated too: a copy given a fresh sequence number is a tampered
    // packet (the same sequence number would be dropped as a replay before authentication).
    let seq = u16::from_be_bytes([original.payload[2], original.payload[3]]);
    let mut tampered = original.payload.clone();
    tampered[2..4].copy_from_slice(&seq.wrapping_add(5000).to_be_bytes());
    let mut forged = original.payload.clone();
    forged[2..4].copy_from_slice(&seq.wrapping_add(5001).to_be_bytes());
    for b in &mut forged[12..] {
        *b = rand::random();
    }
    let third = m
        .lab
        .udp_socket(&m.lab.server_ns(), "198.51.100.1:0".parse().unwrap())
        .unwrap();
    for pkt in [&original.payload, &tampered, &forged] {
        third.send_to(pkt, original.dst).unwrap();
    }
    let delta = |after: &serde_json::Value, key: &str| {
        after[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0)
    };
    // The three arrive within the lab's sub-millisecond link; the callee's stats are asked
    // for until they show them (bounded), since stdin and the socket are separate inputs.
    let t0 = Instant::now();
    let after = loop {
        let after = stats(&mut bob);
        if delta(&after, "forged") >= 2 && delta(&after, "replayed") >= 1 {
            break after;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "injected packets not counted: before {before}, after {after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The call goes on: half a second more of the caller's audio arrives (bounded wait).
    let t0 = Instant::now();
    while delta(&stats(&mut bob), "received") < delta(&after, "received") + 25 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "media stopped after the injection: {:#?}",
            bob.seen
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The callee hangs up: the caller ends normally.
    let stdin = bob.proc.child.stdin.as_mut().unwrap();
    writeln!(stdin, r#"{{"cmd":"hangup"}}"#).unwrap();
    stdin.flush().unwrap();
    let ended = wait_event(&dial_rx, "ended", Duration::from_secs(10), &mut dial_seen)
        .unwrap_or_else(|| panic!("the caller sees the hang-up: {dial_seen:#?}"));
    assert_eq!(ended["reason"], "remote-hangup", "{ended}");
    drop(dial);
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// The callee's `stats` event, asked for on its control stream.
fn stats(bob: &mut Answerer) -> serde_json::Value {
    let stdin = bob.proc.child.stdin.as_mut().unwrap();
    writeln!(stdin, r#"{{"cmd":"stats"}}"#).unwrap();
    stdin.flush().unwrap();
    bob.wait("stats", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("stats: {:#?}", bob.seen))
}
