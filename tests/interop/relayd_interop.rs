//! Interop both ways with coturn, in the lab:
//! - coturn's own load client, `turnutils_uclient -m 10 -n 300 -z 5`, relays through `relayd` with
//!   no loss in every mode (default with RTP/RTCP pairs, -c, -s, -t, -S -t, -D, -y), with
//!   time-limited credentials (-W) and with a users file (-u/-w), beside the same runs against
//!   coturn's `turnserver` as the baseline. relayd listens with a bare `--listen ADDR` and a
//!   certificate, so UDP (the default modes), TCP (-t) and TLS (-S -t) all reach it on the one
//!   port 3478;
//! - our TURN client relays through coturn's `turnserver`.

use crate::support::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Proc, start_relayd, test_cert, udp_echo};
use voxlab::{BoxOpts, Lab, LabNat};
use voxmesh::net::drivers::turn_client::{TurnRelay, TurnTransport};
use voxmesh::turn::TurnClientConfig;

const MODES: [(&str, &[&str]); 7] = [
    ("default", &[]),
    ("-c", &["-c"]),
    ("-s", &["-s"]),
    ("-t", &["-t"]),
    ("-S -t", &["-S", "-t"]),
    ("-D", &["-D"]),
    ("-y", &["-y"]),
];

#[derive(Debug, Clone, Copy, PartialEq)]
struct Outcome {
    sent: u64,
    received: u64,
    lost: u64,
}

fn parse_uclient(out: &str) -> Option<Outcome> {
    let num = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let totals = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let lost = out
        .lines()
        .rev()
        .find(|l| l.contains("Total lost packets"))?;
    Some(Outcome {
        sent: num(totals, "tot_send_msgs=")?,
        received: num(totals, "tot_recv_msgs=")?,
        lost: num(lost, "Total lost packets ")?,
    })
}

fn start_coturn_turn(
    lab: &Lab,
    dir: &std::path::Path,
    port: u16,
    tls_port: u16,
    ports: (u16, u16),
    auth: &[&str],
) -> Proc {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut args: Vec<String> = [
        "-n",
        "--no-cli",
        "--no-dtls",
        "--log-file",
        "/dev/null",
        "--no-stdout-log",
        "--simple-log",
        "-m",
        "1",
        "-L",
        "198.51.100.2",
        "-E",
        "198.51.100.2",
        "-r",
        "voxmesh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-p".into(),
        port.to_string(),
        "--tls-listening-port".into(),
        tls_port.to_string(),
    ]);
    args.extend([
        "--min-port".into(),
        ports.0.to_string(),
        "--max-port".into(),
        ports.1.to_string(),
    ]);
    args.extend([
        "--cert".into(),
        cert.display().to_string(),
        "--pkey".into(),
        key.display().to_string(),
    ]);
    args.extend(auth.iter().map(|s| s.to_string()));
    let child = lab
        .command(&lab.server_ns(), "turnserver")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn turnserver");
    let proc = Proc {
        child,
        name: "turnserver",
    };
    common::wait_stun(
        lab,
        &lab.server_ns(),
        format!("198.51.100.2:{port}").parse().unwrap(),
    );
    proc
}

#[test]
fn coturn_uclient_relays_through_relayd_without_loss_in_every_mode() {
    let test = "coturn_uclient_relays_through_relayd";
    if !Lab::ready_or_skip(test) || !common::coturn_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let peer = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let client = lab.add(2, &BoxOpts::new(LabNat::None)).unwrap();
    let dir = std::env::temp_dir().join(format!("vx-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, _) = test_cert("relay.test");
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    std::fs::write(dir.join("users"), "alice:secret\n").unwrap();

    let _peer = {
        let child = lab
            .command(&peer.hosts[0].ns, "turnutils_peer")
            .args(["-L", &peer.hosts[0].ip4, "-p", "3480"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Proc {
            child,
            name: "turnutils_peer",
        }
    };
    let relayd = start_relayd(
        &lab,
        &[
            // UDP, TCP and TLS on one port: what a bare address serves.
            "--listen",
            "198.51.100.1:3478",
            "--cert",
            &dir.join("cert.pem").display().to_string(),
            "--key",
            &dir.join("key.pem").display().to_string(),
            "--users",
            &dir.join("users").display().to_string(),
            "--auth-secret",
            "north",
            "--allow-peer",
            "198.51.100.0/24",
            "--realm",
            "voxmesh",
            // uclient leaves its allocations to expire: 28 runs from one host and user add up.
            "--user-quota",
            "1000",
            "--source-quota",
            "1000",
        ],
    );
    let coturn_users = start_coturn_turn(
        &lab,
        &dir,
        3478,
        5349,
        (50000, 54999),
        &["-a", "-u", "alice:secret"],
    );
    let coturn_secret = start_coturn_turn(
        &lab,
        &dir,
        3479,
        5350,
        (55000, 59999),
        &["--use-auth-secret", "--static-auth-secret", "north"],
    );

    // (server name, mode, ip, udp/tcp port, tls port, auth flags)
    type Run<'a> = (&'a str, &'a str, &'a str, u16, u16, Vec<&'a str>);
    let runs: Vec<Run> = MODES
        .iter()
        .flat_map(|(mode, _)| {
            [
                (
                    "relayd",
                    *mode,
                    "198.51.100.1",
                    3478u16,
                    3478u16,
                    vec!["-u", "alice", "-w", "secret"],
                ),
                (
                    "relayd",
                    *mode,
                    "198.51.100.1",
                    3478,
                    3478,
                    vec!["-u", "alice", "-W", "north"],
                ),
                (
                    "coturn",
                    *mode,
                    "198.51.100.2",
                    3478,
                    5349,
                    vec!["-u", "alice", "-w", "secret"],
                ),
                (
                    "coturn",
                    *mode,
                    "198.51.100.2",
                    3479,
                    5350,
                    vec!["-u", "alice", "-W", "north"],
                ),
            ]
        })
        .collect();
    let ns = client.hosts[0].ns.clone();
    let peer_ip = peer.hosts[0].ip4.clone();
    let results: Vec<(String, String, String, Option<Outcome>, String, Duration)> =
        std::thread::scope(|s| {
            let mut out = Vec::new();
            // Fourteen uclients at a time (each mostly waits: ~8 s for its 1.5 s of sending), so
            // the 28 runs take two rounds; at most 7 of them through relayd at once, few enough
            // that the machine's two cores never become the bottleneck that loses packets.
            for chunk in runs.chunks(14) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(server, mode, ip, port, tls_port, auth)| {
                        let (lab, ns, peer_ip) = (&lab, &ns, &peer_ip);
                        s.spawn(move || {
                            let flags = MODES.iter().find(|(m, _)| m == mode).unwrap().1;
                            let t0 = std::time::Instant::now();
                            let port = if flags.contains(&"-S") {
                                *tls_port
                            } else {
                                *port
                            };
                            let o = lab
                                .command(ns, "timeout")
                                .args([
                                    "120",
                                    "turnutils_uclient",
                                    "-m",
                                    "10",
                                    "-n",
                                    "300",
                                    "-z",
                                    "5",
                                ])
                                .args(flags)
                                .args(auth)
                                .args(["-p", &port.to_string(), "-e", peer_ip, "-r", "3480", ip])
                                .output()
                                .unwrap();
                            let text = String::from_utf8_lossy(&o.stdout).to_string()
                                + &String::from_utf8_lossy(&o.stderr);
                            let how = if auth.contains(&"-W") { "-W" } else { "-u/-w" };
                            (
                                server.to_string(),
                                mode.to_string(),
                                how.to_string(),
                                parse_uclient(&text),
                                text,
                                t0.elapsed(),
                            )
                        })
                    })
                    .collect();
                out.extend(handles.into_iter().map(|h| h.join().unwrap()));
            }
            out
        });
    drop((relayd, coturn_users, coturn_secret));
    let _ = std::fs::remove_dir_all(&dir);
    for (server, mode, how, outcome, text, took) in &results {
        eprintln!("UCLIENT {server:7} {mode:8} {how:6} {outcome:?} in {took:.1?}");
        if server == "relayd" {
            let o = outcome.unwrap_or_else(|| {
                panic!("relayd {mode} {how}: uclient printed no totals:\n{text}")
            });
            // Pairs of allocations (RTP/RTCP) mean twice the messages; either way all must arrive.
            assert!(o.sent >= 3_000, "relayd {mode} {how}: only {} sent", o.sent);
            assert_eq!(
                (o.lost, o.received),
                (0, o.sent),
                "relayd {mode} {how}: loss\n{text}"
            );
        }
    }
}

#[test]
fn our_client_relays_through_coturn() {
    let test = "our_client_relays_through_coturn";
    if !Lab::ready_or_skip(test) || !common::coturn_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let peer = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let client = lab
        .add(2, &BoxOpts::new(LabNat::PortRestrictedCone))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("vx-ours-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, _) = test_cert("relay.test");
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let _coturn = start_coturn_turn(
        &lab,
        &dir,
        3478,
        5349,
        (50000, 54999),
        &["-a", "-u", "alice:secret"],
    );
    let peer_addr: SocketAddr = format!("{}:7000", peer.hosts[0].ip4).parse().unwrap();
    let echo = udp_echo(&lab, &peer.hosts[0].ns, peer_addr, 100);
    let ns = client.hosts[0].ns.clone();
    let got = voxlab::in_netns(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let cfg =
                TurnClientConfig::new("198.51.100.2:3478".parse().unwrap(), "alice", "secret");
            let mut relay = TurnRelay::allocate(cfg, TurnTransport::Udp, Duration::from_secs(5))
                .await
                .map_err(std::io::Error::other)?;
            assert_eq!(relay.relayed().ip().to_string(), "198.51.100.2");
            relay
                .create_permission(peer_addr)
                .await
                .map_err(std::io::Error::other)?;
            let mut got = 0;
            // Half by Send indication, half over a channel.
            for i in 0..100u32 {
                if i == 50 {
                    relay
                        .bind_channel(peer_addr)
                        .await
                        .map_err(std::io::Error::other)?;
                }
                relay
                    .send_to(peer_addr, &i.to_be_bytes())
                    .await
                    .map_err(std::io::Error::other)?;
                let (from, data) = tokio::time::timeout(Duration::from_secs(2), relay.recv())
                    .await
                    .map_err(|_| std::io::Error::other("no echo"))?
                    .ok_or_else(|| std::io::Error::other("relay closed"))?;
                assert_eq!((from, data), (peer_addr, i.to_be_bytes().to_vec()));
                got += 1;
            }
            relay.release().await;
            Ok::<_, std::io::Error>(got)
        })
    })
    .unwrap();
    assert_eq!(got, 100);
    assert_eq!(echo.join().unwrap(), 100);
    let _ = std::fs::remove_dir_all(&dir);
}
