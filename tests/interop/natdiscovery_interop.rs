//! Differential interop: coturn's own NAT discovery client, `turnutils_natdiscovery`, and the
//! classic RFC 3489 client `stun` (stun-client) reach the same verdicts against our supernoded
//! as against coturn's turnserver, behind every lab NAT type, with a fresh NAT for every run.

use crate::support::common;

use common::{COTURN_PORT, SUPERNODE_PORT, start_coturn, start_supernoded};
use voxlab::{BoxOpts, FilterState, Lab, LabNat};

/// The verdict lines of a natdiscovery run: everything else (addresses, ports, diagnostics that
/// differ between servers by design, like whether MAPPED-ADDRESS is sent) is left out.
fn verdicts(output: &str) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("NAT with") || l.contains("hairpinning") || l.contains("receive timeout")
        })
        .map(str::to_string)
        .collect()
}

fn tool_or_skip(test: &str, tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {tool} missing under CI=true"
        );
        eprintln!("SKIPPED {test}: {tool} is not installed");
    }
    found
}

fn run(test: &str, opts: BoxOpts) {
    if !Lab::ready_or_skip(test)
        || !common::coturn_or_skip(test)
        || !tool_or_skip(test, "turnutils_natdiscovery")
    {
        return;
    }
    let (lab, info) = Lab::with_box(&opts).unwrap();
    let _sn = start_supernoded(&lab);
    let _coturn = start_coturn(&lab);
    let ns = &info.hosts[0].ns;
    for mode in ["-m", "-f", "-H"] {
        let mut seen = Vec::new();
        for port in [SUPERNODE_PORT, COTURN_PORT] {
            lab.reset(info.index).unwrap();
            let out = lab
                .command(ns, "timeout")
                .args([
                    "60",
                    "turnutils_natdiscovery",
                    mode,
                    "-p",
                    &port.to_string(),
                    "198.51.100.1",
                ])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let v = verdicts(&text);
            assert!(
                !v.is_empty(),
                "{test} {mode} port {port}: no verdict in\n{text}"
            );
            seen.push(v);
        }
        assert_eq!(
            seen[0], seen[1],
            "{test} {mode}: supernoded (left) and coturn (right) disagree"
        );
        eprintln!("{test} {mode}: {:?}", seen[0]);
    }

    // The classic RFC 3489 client classifies the NAT the same way against both servers.
    if tool_or_skip(test, "stun") && opts.nat != LabNat::UdpBlocked {
        let mut seen = Vec::new();
        for (port, alt) in [
            (SUPERNODE_PORT, common::SUPERNODE_ALT_PORT),
            (COTURN_PORT, common::COTURN_ALT_PORT),
        ] {
            lab.reset(info.index).unwrap();
            let out = lab
                .command(ns, "timeout")
                .args(["30", "stun", "198.51.100.1", "-p", &port.to_string()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let primary: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("Primary:"))
                .map(|l| l.trim().into())
                .collect();
            assert_eq!(
                primary.len(),
                1,
                "{test}: stun printed no classification against port {port} (alt {alt}):\n{text}"
            );
            seen.push(primary);
        }
        assert_eq!(
            seen[0], seen[1],
            "{test}: stun-client disagrees between supernoded and coturn"
        );
        eprintln!("{test} stun-client: {:?}", seen[0]);
    }
}

#[test]
fn public_host() {
    run("natdiscovery_public_host", BoxOpts::new(LabNat::None));
}

#[test]
fn full_cone() {
    run(
        "natdiscovery_full_cone",
        BoxOpts::new(LabNat::FullCone).hairpin(true),
    );
}

#[test]
fn restricted_cone() {
    run(
        "natdiscovery_restricted_cone",
        BoxOpts::new(LabNat::RestrictedCone),
    );
}

#[test]
fn restricted_cone_per_box() {
    run(
        "natdiscovery_restricted_cone_per_box",
        BoxOpts::new(LabNat::RestrictedCone)
            .filter_state(FilterState::Box)
            .hairpin(true),
    );
}

#[test]
fn port_restricted_cone() {
    run(
        "natdiscovery_port_restricted_cone",
        BoxOpts::new(LabNat::PortRestrictedCone),
    );
}

#[test]
fn symmetric() {
    run(
        "natdiscovery_symmetric",
        BoxOpts::new(LabNat::Symmetric).hairpin(true),
    );
}

#[test]
fn udp_blocked() {
    run("natdiscovery_udp_blocked", BoxOpts::new(LabNat::UdpBlocked));
}
