//! relayd in the lab: clients that cannot reach each other directly talk through it.
//! - two clients behind symmetric NATs exchange data through one relay (internal delivery);
//! - a client behind a UDP-blocking NAT relays over TCP and over TLS;
//! - a relayed flow keeps going through a SIGTERM drain, while new allocations are refused.

use crate::support::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{start_relayd, test_cert, udp_echo};
use voxlab::{BoxOpts, Lab, LabNat, in_netns};
use voxmesh::net::drivers::turn_client::{RelayError, TurnRelay, TurnTransport};
use voxmesh::turn::{Op, TurnClientConfig};

const RELAY: &str = "198.51.100.1";

fn relayd_args(dir: &std::path::Path) -> Vec<String> {
    [
        "--listen",
        "udp:198.51.100.1:3478",
        "--listen",
        "tcp:198.51.100.1:3478",
        "--listen",
        "tls:198.51.100.1:5349",
        "--user",
        "alice:secret",
        "--user",
        "bob:hunter2",
        "--allow-peer",
        "198.51.100.0/24",
        "--allow-peer",
        "2001:db8::/32",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--cert".into(),
        dir.join("cert.pem").display().to_string(),
        "--key".into(),
        dir.join("key.pem").display().to_string(),
    ])
    .collect()
}

fn certs(tag: &str) -> (std::path::PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("vx-relaylab-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, der) = test_cert("relay.test");
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    (dir, der)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn server(port: u16) -> SocketAddr {
    format!("{RELAY}:{port}").parse().unwrap()
}

#[test]
fn two_clients_behind_symmetric_nats_talk_through_relayd() {
    let test = "two_clients_behind_symmetric_nats";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let a = lab.add(1, &BoxOpts::new(LabNat::Symmetric)).unwrap();
    let b = lab.add(2, &BoxOpts::new(LabNat::Symmetric)).unwrap();
    let (dir, _) = certs("sym");
    let args = relayd_args(&dir);
    let _relay = start_relayd(&lab, &args.iter().map(String::as_str).collect::<Vec<_>>());
    // Each side allocates, learns the other's relayed address (here: over a channel between
    // the test threads; in voxmesh, through call signalling), permits it, and sends.
    let (tx_a, rx_a) = std::sync::mpsc::channel::<SocketAddr>();
    let (tx_b, rx_b) = std::sync::mpsc::channel::<SocketAddr>();
    let side = |ns: String,
                user: &'static str,
                pass: &'static str,
                mine: std::sync::mpsc::Sender<SocketAddr>,
                theirs: std::sync::mpsc::Receiver<SocketAddr>,
                tag: u8| {
        std::thread::spawn(move || {
            in_netns(&ns, || {
                rt().block_on(async move {
                    let cfg = TurnClientConfig::new(server(3478), user, pass);
                    let mut relay =
                        TurnRelay::allocate(cfg, TurnTransport::Udp, Duration::from_secs(5))
                            .await
                            .map_err(std::io::Error::other)?;
                    mine.send(relay.relayed()).unwrap();
                    let other = theirs
                        .recv_timeout(Duration::from_secs(10))
                        .map_err(std::io::Error::other)?;
                    relay
                        .bind_channel(other)
                        .await
                        .map_err(std::io::Error::other)?;
                    // Keep sending until 50 of the other side's messages arrived (the other may
                    // bind its channel a little later: early messages can be refused).
                    let mut got = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut i = 0u32;
                    // Each side sends at least 200 (not just until it has its 50): one that
                    // stopped at 50 could leave the other one short (it happened under load).
                    while (got.len() < 50 || i < 200) && Instant::now() < deadline {
                        relay
                            .send_to(other, &[tag, (i % 256) as u8])
                            .await
                            .map_err(std::io::Error::other)?;
                        i += 1;
                        if let Ok(Some((from, data))) =
                            tokio::time::timeout(Duration::from_millis(20), relay.recv()).await
                        {
                            assert_eq!(
                                from, other,
                                "data comes from the other side's relayed address"
                            );
                            got.push(data[0]);
                        }
                    }
                    Ok::<_, std::io::Error>(got)
                })
            })
        })
    };
    let ha = side(a.hosts[0].ns.clone(), "alice", "secret", tx_a, rx_b, b'A');
    let hb = side(b.hosts[0].ns.clone(), "bob", "hunter2", tx_b, rx_a, b'B');
    let got_a = ha.join().unwrap().unwrap();
    let got_b = hb.join().unwrap().unwrap();
    assert!(
        got_a.len() >= 50 && got_a.iter().all(|t| *t == b'B'),
        "A received {} from B",
        got_a.len()
    );
    assert!(
        got_b.len() >= 50 && got_b.iter().all(|t| *t == b'A'),
        "B received {} from A",
        got_b.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_blocked_client_relays_over_tcp_and_tls() {
    let test = "udp_blocked_client_relays_over_tcp_and_tls";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let peer = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let blocked = lab.add(2, &BoxOpts::new(LabNat::UdpBlocked)).unwrap();
    let (dir, der) = certs("tcp");
    let args = relayd_args(&dir);
    let _relay = start_relayd(&lab, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let peer_addr: SocketAddr = format!("{}:7000", peer.hosts[0].ip4).parse().unwrap();
    let echo = udp_echo(&lab, &peer.hosts[0].ns, peer_addr, 200);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(der))
        .unwrap();
    let roots = std::sync::Arc::new(roots);
    let ns = blocked.hosts[0].ns.clone();
    in_netns(&ns, || {
        rt().block_on(async {
            // UDP really is blocked here.
            let cfg = TurnClientConfig::new(server(3478), "alice", "secret");
            let udp = TurnRelay::allocate(cfg, TurnTransport::Udp, Duration::from_secs(2)).await;
            assert!(
                matches!(
                    udp,
                    Err(RelayError::Refused {
                        op: Op::Allocate,
                        code: 0,
                        ..
                    })
                ),
                "UDP must fail here"
            );
            for (name, transport, port) in [
                ("tcp", TurnTransport::Tcp, 3478),
                (
                    "tls",
                    TurnTransport::Tls {
                        server_name: "relay.test".into(),
                        roots: roots.clone(),
                    },
                    5349,
                ),
            ] {
                let cfg = TurnClientConfig::new(server(port), "alice", "secret");
                let mut relay = TurnRelay::allocate(cfg, transport, Duration::from_secs(5))
                    .await
                    .map_err(std::io::Error::other)?;
                assert_eq!(
                    relay.relayed().ip().to_string(),
                    RELAY,
                    "{name}: the relayed side is UDP on the relay"
                );
                relay
                    .create_permission(peer_addr)
                    .await
                    .map_err(std::io::Error::other)?;
                for i in 0..100u32 {
                    if i == 50 {
                        relay
                            .bind_channel(peer_addr)
                            .await
                            .map_err(std::io::Error::other)?;
                    }
                    let msg = format!("{name}-{i}");
                    relay
                        .send_to(peer_addr, msg.as_bytes())
                        .await
                        .map_err(std::io::Error::other)?;
                    let (from, data) = tokio::time::timeout(Duration::from_secs(2), relay.recv())
                        .await
                        .map_err(|_| std::io::Error::other(format!("{name}: no echo for {i}")))?
                        .ok_or_else(|| std::io::Error::other("closed"))?;
                    assert_eq!((from, data), (peer_addr, msg.into_bytes()), "{name}");
                }
                relay.release().await;
            }
            Ok::<_, std::io::Error>(())
        })
    })
    .unwrap();
    assert_eq!(echo.join().unwrap(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_relayed_flow_survives_a_sigterm_drain() {
    let test = "a_relayed_flow_survives_a_sigterm_drain";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let peer = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let client = lab.add(2, &BoxOpts::new(LabNat::FullCone)).unwrap();
    let (dir, _) = certs("drain");
    let mut args = relayd_args(&dir);
    args.extend([
        "--drain".into(),
        "3".into(),
        "--alternate-server".into(),
        "198.51.100.2:3478".into(),
    ]);
    let mut relay = start_relayd(&lab, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let peer_addr: SocketAddr = format!("{}:7000", peer.hosts[0].ip4).parse().unwrap();
    let _echo = udp_echo(&lab, &peer.hosts[0].ns, peer_addr, 100_000);
    let pid = relay.child.id() as i32;
    let ns = client.hosts[0].ns.clone();
    let (echoed_after_term, alternate) = in_netns(&ns, || {
        rt().block_on(async {
            let cfg = TurnClientConfig::new(server(3478), "alice", "secret");
            let mut r = TurnRelay::allocate(cfg, TurnTransport::Udp, Duration::from_secs(5))
                .await
                .map_err(std::io::Error::other)?;
            r.bind_channel(peer_addr)
                .await
                .map_err(std::io::Error::other)?;
            let mut after = 0;
            let mut alternate = None;
            let start = Instant::now();
            let mut termed = None;
            // 20 ms voice-like packets for 2.5 s; SIGTERM at 0.5 s; the drain lasts 3 s.
            while start.elapsed() < Duration::from_millis(2500) {
                if termed.is_none() && start.elapsed() > Duration::from_millis(500) {
                    // SAFETY: signalling our own child process.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    termed = Some(Instant::now());
                    // New allocations are sent elsewhere during the drain. The signal is
                    // handled asynchronously: an allocation answered before relayd saw it is
                    // not one during the drain, so ask again (each answer takes a round trip)
                    // until the drain answers, for at most a second.
                    let asked = Instant::now();
                    loop {
                        let cfg = TurnClientConfig::new(server(3478), "bob", "hunter2");
                        match TurnRelay::allocate(cfg, TurnTransport::Udp, Duration::from_secs(2))
                            .await
                        {
                            Err(RelayError::Alternate(a)) => {
                                alternate = Some(a);
                                break;
                            }
                            Ok(r) if asked.elapsed() < Duration::from_secs(1) => drop(r),
                            other => panic!(
                                "a new allocation during the drain: {:?}",
                                other.map(|r| r.relayed())
                            ),
                        }
                    }
                }
                r.send_to(peer_addr, b"voice")
                    .await
                    .map_err(std::io::Error::other)?;
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), r.recv()).await
                    && termed.is_some()
                {
                    after += 1;
                }
            }
            Ok::<_, std::io::Error>((after, alternate))
        })
    })
    .unwrap();
    assert!(
        echoed_after_term >= 50,
        "only {echoed_after_term} packets relayed after SIGTERM"
    );
    assert_eq!(alternate, Some("198.51.100.2:3478".parse().unwrap()));
    // The drain ends and relayd exits 0 by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "relayd did not exit after the drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
