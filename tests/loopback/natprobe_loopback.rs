//! natprobe's dialect on loopback: servers as `KEY@HOST:PORT` (the form dial, answer and relayd
//! take), and IPv4 and IPv6 probed in one run, reported in one JSON object. A `supernoded
//! --stun-only` serves on 127.0.0.1 and ::1; no traffic leaves loopback. Behind no NAT the
//! answers are known: each family's mapped address is its local one. (The lab tests,
//! natprobe_lab.rs, cover the NAT types; this one covers the command line and the schema.)

use crate::support::common::first_line;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    v4: String,
    v6: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_supernoded"))
        .args([
            "--stun-only",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
        ])
        .arg("--identity")
        .arg(dir.path().join("key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn supernoded");
    // One JSON line once every socket is bound: that is readiness.
    let line = first_line(&mut child);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let stun = v["stun"].as_array().unwrap();
    let addr = |v4: bool| {
        stun.iter()
            .map(|s| s["primary"].as_str().unwrap().to_string())
            .find(|a| a.starts_with('[') != v4)
            .unwrap()
    };
    Server {
        v4: addr(true),
        v6: addr(false),
        child,
        _dir: dir,
    }
}

fn natprobe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natprobe"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text:?}");
    serde_json::from_str(text.trim()).unwrap()
}

/// A node key in its text form, as `supernoded` prints it.
fn some_key() -> String {
    voxmesh::identity::Identity::generate()
        .node_key()
        .to_string()
}

#[test]
fn both_families_in_one_object_from_key_at_host_port_servers() {
    let s = start_server();
    let key = some_key();
    let v4 = format!("{key}@{}", s.v4);
    let out = natprobe(&["--json", "-s", &v4, "--supernode", &s.v6]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r = json(&out);
    assert_eq!(r["family"], "ipv4", "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    for (fam, server) in [("ipv4", &s.v4), ("ipv6", &s.v6)] {
        let f = &r[fam];
        // No alternate address on loopback: filtering, so the NAT's name, stays undecided.
        assert_eq!(f["port_preserved"], true, "{fam}: {r}");
        assert_eq!(f["mapped_address"], f["local_address"], "{fam}: {r}");
        assert_eq!(f["servers"][0]["address"], server.as_str(), "{fam}: {r}");
        assert!(f["servers"][0]["rtt_ms"].as_f64().is_some(), "{fam}: {r}");
    }
    assert!(
        r["ipv6"]["mapped_address"]
            .as_str()
            .unwrap()
            .starts_with("[::1]")
    );
    // The top level is the primary family's report, as before dual stack.
    for k in ["nat", "mapping", "filtering", "mapped_address", "advice"] {
        assert_eq!(r[k], r["ipv4"][k], "{k}: {r}");
    }
    // The first server decides the primary family.
    let r6 = json(&natprobe(&["--json", "-s", &s.v6, "-s", &v4]));
    assert_eq!(r6["family"], "ipv6");
    assert_eq!(r6["mapped_address"], r6["ipv6"]["mapped_address"]);
    // The summary has a section per family.
    let text = String::from_utf8_lossy(&natprobe(&["-s", &v4, "-s", &s.v6]).stdout).to_string();
    assert!(text.contains("IPv4:") && text.contains("IPv6:"), "{text}");
}

#[test]
fn one_family_when_asked_or_given() {
    let s = start_server();
    let key = some_key();
    let r = json(&natprobe(&["--json", "-s", &format!("{key}@{}", s.v4)]));
    assert_eq!((&r["family"], &r["ipv6"]), (&"ipv4".into(), &Value::Null));
    assert_eq!(r["ipv4"]["mapped_address"], r["ipv4"]["local_address"]);
    let r = json(&natprobe(&["--json", "-6", "-s", &s.v6]));
    assert_eq!((&r["family"], &r["ipv4"]), (&"ipv6".into(), &Value::Null));
    // -4 keeps to IPv4 even when a name resolves to both ("localhost" may).
    let port = s.v4.rsplit_once(':').unwrap().1;
    let r = json(&natprobe(&[
        "--json",
        "-4",
        "-s",
        &format!("localhost:{port}"),
    ]));
    assert_eq!((&r["family"], &r["ipv6"]), (&"ipv4".into(), &Value::Null));
}

#[test]
fn bad_keys_and_families_are_usage_errors() {
    let key = some_key();
    // A key with a typo is refused, not ignored.
    let bad = natprobe(&["-s", "vxk1notakey@127.0.0.1:3478"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad server"));
    let fam = natprobe(&["-6", "-s", &format!("{key}@127.0.0.1:3478")]);
    assert_eq!(fam.status.code(), Some(2), "{fam:?}");
    let port = natprobe(&["-s", &format!("{key}@127.0.0.1:0")]);
    assert_eq!(port.status.code(), Some(2), "{port:?}");
}
