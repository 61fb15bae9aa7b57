//! Secrets rotate without a restart: relayd re-reads `--auth-secret-file` on SIGHUP, accepts
//! the previous secret while it is still listed, and stops accepting it once removed. Loopback
//! only: allocations need no peer.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voxmesh::turn::{TurnClient, TurnClientConfig, TurnEvent, mint_rest_credential};

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Allocates with `secret`-minted credentials over a fresh UDP socket; the server's verdict.
fn allocate(server: SocketAddr, secret: &[u8]) -> Result<SocketAddr, u16> {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (user, pass) = mint_rest_credential(secret, "carol", expiry);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut c = TurnClient::new(TurnClientConfig::new(server, &user, &pass));
    c.allocate(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        while let Some(t) = c.poll_transmit() {
            sock.send_to(&t.data, t.to).unwrap();
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                TurnEvent::Allocated { relayed, .. } => {
                    c.release(Instant::now());
                    while let Some(t) = c.poll_transmit() {
                        sock.send_to(&t.data, t.to).unwrap();
                    }
                    return Ok(relayed);
                }
                TurnEvent::Failed { code, .. } => return Err(code),
                _ => {}
            }
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            c.handle_input(Instant::now(), &buf[..n]);
        } else {
            c.handle_timeout(Instant::now());
        }
    }
    Err(0)
}

#[test]
fn sighup_reloads_secrets_and_rotation_keeps_the_previous_one() {
    let dir = std::env::temp_dir().join(format!("vx-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, "first\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_relayd"))
        .args([
            "--listen",
            "udp:127.0.0.1:0",
            "--relay-ip",
            "127.0.0.1",
            "--relay-ports",
            "40000-40999",
        ])
        .arg("--auth-secret-file")
        .arg(&secrets)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let d = Daemon(child);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let server: SocketAddr = v["listen"][0]["address"].as_str().unwrap().parse().unwrap();

    assert!(allocate(server, b"first").is_ok());
    assert_eq!(allocate(server, b"second"), Err(401), "not yet known");

    let hup = |d: &Daemon| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(d.0.id() as i32, libc::SIGHUP) };
    };
    // Rotation: the new secret first, the previous one still accepted.
    std::fs::write(&secrets, "second\nfirst\n").unwrap();
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(5);
    while allocate(server, b"second").is_err() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not load the new secret"
        );
    }
    assert!(
        allocate(server, b"first").is_ok(),
        "the previous secret works during rotation"
    );

    // Retire the old secret.
    std::fs::write(&secrets, "second\n").unwrap();
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(5);
    while allocate(server, b"first").is_ok() {
        assert!(
            Instant::now() < deadline,
            "the retired secret is still accepted"
        );
    }
    assert!(allocate(server, b"second").is_ok());

    // A broken file on reload keeps the old credentials rather than locking everyone out.
    std::fs::write(&secrets, "").unwrap();
    hup(&d);
    assert!(allocate(server, b"second").is_ok());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
