//! The relay directory for real, on loopback: `relayd --supernode` authorises one supernode,
//! which then hands its clients time-limited credentials that work on the relay; credentials
//! naming a supernode the relay never authorised, or altered in any part, get 401; the load the
//! relay reports reaches the offers; a relay that stops is withdrawn from the offers at once.
//!
//! Network rule: everything binds and sends to 127.0.0.1 only.

use crate::support::relayd as relayd_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relayd_support::{Good, Raw, udp_transport};
use tokio::sync::mpsc;
use voxmesh::client::{Agent, AgentConfig, AgentEvent};
use voxmesh::identity::{BootstrapEntry, Identity};
use voxmesh::net::ShutdownSignal;
use voxmesh::net::drivers::client::{AgentCommand, run_agent};
use voxmesh::signal::RelayOffer;
use voxmesh::stun::method;
use voxmesh::turn::rest_password;

/// A child process killed (and reaped) when dropped, even when the test fails.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `bin` and returns it with its first stdout line (its JSON readiness line).
fn spawn(bin: &str, args: &[String]) -> (Daemon, serde_json::Value) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let daemon = Daemon(child);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{bin} printed no readiness line"));
    let json = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{bin}: {e}: {line:?}"));
    (daemon, json)
}

fn supernoded(dir: &Path, name: &str) -> (Daemon, BootstrapEntry) {
    let args = [
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--identity".into(),
        dir.join(format!("{name}.key")).display().to_string(),
        "--host-cache".into(),
        dir.join(format!("{name}.hosts")).display().to_string(),
        "--control".into(),
        dir.join(format!("{name}.sock")).display().to_string(),
        "-q".into(),
    ];
    let (d, json) = spawn(env!("CARGO_BIN_EXE_supernoded"), &args);
    let entry = json["node"].as_str().expect("node entry").parse().unwrap();
    (d, entry)
}

struct Relay {
    daemon: Daemon,
    udp: SocketAddr,
    id: String,
}

fn relayd(dir: &Path, supernode: &BootstrapEntry) -> Relay {
    let args = [
        "--listen".into(),
        "udp:127.0.0.1:0".into(),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--supernode".into(),
        supernode.to_string(),
        "--identity".into(),
        dir.join("relay.key").display().to_string(),
        "--drain".into(),
        "20".into(),
        "-q".into(),
    ];
    let (daemon, json) = spawn(env!("CARGO_BIN_EXE_relayd"), &args);
    let udp = json["listen"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let id = json["relay"]
        .as_str()
        .expect("relay ID in the listening line")
        .to_string();
    Relay { daemon, udp, id }
}

/// A client agent registered with `supernode`, driven on a runtime of its own thread.
struct Client {
    commands: mpsc::Sender<AgentCommand>,
    events: std::sync::mpsc::Receiver<AgentEvent>,
    stop: ShutdownSignal,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(supernode: &BootstrapEntry) -> Client {
        let addr = format!("{}:{}", supernode.host, supernode.port)
            .parse::<SocketAddr>()
            .unwrap();
        let bootstrap = vec![(supernode.key, addr)];
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (ev_tx, ev_rx) = std::sync::mpsc::channel();
        let (stop, shutdown) = ShutdownSignal::new();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let agent = Agent::new(
                    Identity::generate(),
                    AgentConfig::new(bootstrap),
                    Instant::now(),
                    unix,
                    rand_seed(),
                );
                let (tx, mut rx) = mpsc::channel(64);
                let forward = tokio::spawn(async move {
                    while let Some(ev) = rx.recv().await {
                        if ev_tx.send(ev).is_err() {
                            return;
                        }
                    }
                });
                let _ = run_agent(agent, socket, cmd_rx, tx, shutdown).await;
                forward.abort();
            });
        });
        let c = Client {
            commands: cmd_tx,
            events: ev_rx,
            stop,
            thread: Some(thread),
        };
        c.wait_for("registration", |e| {
            matches!(e, AgentEvent::Registered { .. })
        });
        c
    }

    #[track_caller]
    fn wait_for(&self, what: &str, want: impl Fn(&AgentEvent) -> bool) -> AgentEvent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if want(&e) => return e,
                Ok(_) => {}
                Err(_) => panic!("no {what} within 10 s"),
            }
        }
    }

    /// Asks the supernode for relay offers.
    #[track_caller]
    fn offers(&self) -> Vec<RelayOffer> {
        self.commands.blocking_send(AgentCommand::Relays).unwrap();
        match self.wait_for("relay offers", |e| matches!(e, AgentEvent::Relays(_))) {
            AgentEvent::Relays(r) => r.expect("relay offers"),
            _ => unreachable!(),
        }
    }

    /// Asks until `done` holds for the offers (bounded: 15 s; load reports come every 5 s).
    #[track_caller]
    fn offers_until(&self, what: &str, done: impl Fn(&[RelayOffer]) -> bool) -> Vec<RelayOffer> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.offers();
            if done(&o) {
                return o;
            }
            assert!(Instant::now() < deadline, "{what}: offers still {o:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    seed
}

/// An ALLOCATE with `creds` must be refused with 401.
#[track_caller]
fn refused(server: SocketAddr, creds: (&str, &str)) {
    let mut raw = Raw::bind("127.0.0.1", server);
    raw.call(method::ALLOCATE, creds, udp_transport)
        .expect_error(401, "");
}

#[test]
fn supernode_hands_out_credentials_that_work_on_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (_sn, entry) = supernoded(dir.path(), "sn");
    let (_other, stranger) = supernoded(dir.path(), "stranger");
    let relay = relayd(dir.path(), &entry);
    let client = Client::start(&entry);

    // The relay's hello reaches the supernode shortly after both start.
    let offers = client.offers_until("relay registered", |o| !o.is_empty());
    assert_eq!(offers.len(), 1, "{offers:?}");
    let offer = &offers[0];
    assert_eq!(offer.relay.to_string(), relay.id);
    assert_eq!(offer.udp, vec![relay.udp]);
    assert_eq!(offer.realm, "voxmesh");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        offer.expires_at > now && offer.expires_at <= now + 24 * 3600,
        "{offer:?}"
    );
    // The username names the minting supernode, which is what the relay checks it against.
    let parts: Vec<&str> = offer.username.splitn(3, ':').collect();
    assert_eq!(parts[0], offer.expires_at.to_string());
    assert_eq!(parts[1], entry.key.id.to_string());

    // The credentials work: two allocations relay to each other (delivered inside the relay).
    let creds = (offer.username.as_str(), offer.password.as_str());
    let mut a = Good::new("127.0.0.1", relay.udp, creds, false);
    let mut b = Good::new("127.0.0.1", relay.udp, creds, false);
    let (ra, rb) = (a.allocate(), b.allocate());
    a.permit(rb);
    b.permit(ra);
    a.send(rb, b"through the directory");
    assert_eq!(b.recv(), (ra, b"through the directory".to_vec()));

    // Anything else is refused. The same password under a username naming another
    // supernode (one the relay never authorised):
    let forged = format!("{}:{}:{}", parts[0], stranger.key.id, parts[2]);
    refused(relay.udp, (&forged, &offer.password));
    // ... and minted correctly for that name, but with a secret the relay does not know:
    refused(relay.udp, (&forged, &rest_password(b"guess", &forged)));
    // A later expiry, keeping the password:
    let extended = format!("{}:{}:{}", offer.expires_at + 3600, parts[1], parts[2]);
    refused(relay.udp, (&extended, &offer.password));
    // Another user's name:
    let other_user = format!("{}:{}:{}x", parts[0], parts[1], parts[2]);
    refused(relay.udp, (&other_user, &offer.password));
    // The plain coturn form (relayd has no shared secret of its own here):
    let plain = format!("{}:{}", parts[0], parts[2]);
    refused(relay.udp, (&plain, &offer.password));

    // The supernode never authorised gives out nothing for this relay.
    let stranger_client = Client::start(&stranger);
    assert!(stranger_client.offers().is_empty());

    // The two live allocations reach the offers as load.
    client.offers_until("load reported", |o| o.first().is_some_and(|o| o.load == 2));
    a.release();
    client.offers_until("load after release", |o| {
        o.first().is_some_and(|o| o.load == 1)
    });

    // A stopping relay (draining: it takes no new allocations) is withdrawn at once, long
    // before its drain period ends.
    let stopped = Instant::now();
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(
        unsafe { libc::kill(relay.daemon.0.id() as i32, libc::SIGTERM) },
        0
    );
    client.offers_until("relay withdrawn", |o| o.is_empty());
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "withdrawn after {:?}",
        stopped.elapsed()
    );
}
