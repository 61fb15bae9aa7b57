//! natprobe behind every lab NAT type, against supernoded and against coturn, clean and with
//! 20% loss each way plus 150 ms of added round trip over five seeds. On the clean path every
//! property must be exactly right; on the impaired path a property may be null (undecided),
//! never wrong.

mod common;

use std::fmt::Write as _;

use common::{COTURN_PORT, SUPERNODE_PORT, natprobe, start_coturn, start_supernoded};
use serde_json::Value;
use voxmesh::lab::{BoxOpts, FilterState, Lab, LabNat};

const IMPAIRMENT: &str = "loss=0.2,delay=75ms";
const SEEDS: u64 = 5;

struct Want {
    nat: &'static str,
    mapping: Option<&'static str>,
    filtering: Option<&'static str>,
    hairpinning: Option<bool>,
}

const EI: &str = "endpoint-independent";
const AD: &str = "address-dependent";
const APD: &str = "address-and-port-dependent";

/// Compares one report with the truth: `(wrong, nulls)` as lists of property names.
fn judge(r: &Value, want: &Want) -> (Vec<String>, Vec<&'static str>) {
    let mut wrong = Vec::new();
    let mut nulls = Vec::new();
    let s = |v: Option<&str>| v.map_or(Value::Null, |s| Value::String(s.into()));
    let props: [(&'static str, Value); 4] = [
        ("nat", Value::String(want.nat.into())),
        ("mapping", s(want.mapping)),
        ("filtering", s(want.filtering)),
        (
            "hairpinning",
            want.hairpinning.map_or(Value::Null, Value::Bool),
        ),
    ];
    for (name, truth) in props {
        let got = &r[name];
        if got.is_null() && !truth.is_null() {
            nulls.push(name);
        } else if *got != truth {
            wrong.push(format!("{name}: got {got}, want {truth}"));
        }
    }
    (wrong, nulls)
}

fn run(test: &str, opts: BoxOpts, v6: bool, want: Want) {
    if !Lab::ready_or_skip(test) || !common::coturn_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let clean = lab.add(1, &opts).unwrap();
    let impaired: Vec<_> = (1..=SEEDS)
        .map(|seed| {
            lab.add(1 + seed as u32, &opts.clone().impair(IMPAIRMENT, seed))
                .unwrap()
        })
        .collect();
    let _sn = start_supernoded(&lab);
    let _coturn = start_coturn(&lab);
    let servers = if v6 {
        [
            format!("[2001:db8::1]:{SUPERNODE_PORT}"),
            format!("[2001:db8::1]:{COTURN_PORT}"),
        ]
    } else {
        [
            format!("198.51.100.1:{SUPERNODE_PORT}"),
            format!("198.51.100.1:{COTURN_PORT}"),
        ]
    };
    let expect_code = if want.nat == "udp-blocked" { 3 } else { 0 };

    // Clean path: exactly right, nothing undecided, with both servers.
    for server in &servers {
        lab.reset(clean.index).unwrap();
        let (r, code) = natprobe(&lab, &clean.hosts[0].ns, &["--server", server]);
        let (wrong, nulls) = judge(&r, &want);
        assert!(
            wrong.is_empty() && nulls.is_empty(),
            "{test} vs {server}: wrong {wrong:?}, null {nulls:?}\n{r:#}"
        );
        assert_eq!(code, expect_code, "{test} vs {server}: exit code");
        if want.nat != "udp-blocked" {
            assert_eq!(
                r["undecided"],
                Value::Array(vec![]),
                "{test} vs {server}: {r:#}"
            );
            assert!(r["servers"][0]["rtt_ms"].as_f64().is_some(), "RTT measured");
        }
    }

    // Impaired path: never wrong; count what stays undecided. Each impaired box runs on its
    // own thread (its own NAT, its own seed), trying both servers in turn.
    let results: Vec<Vec<(usize, Value, i32)>> = std::thread::scope(|s| {
        let handles: Vec<_> = impaired
            .iter()
            .map(|b| {
                let (lab, servers) = (&lab, &servers);
                s.spawn(move || {
                    (0..servers.len())
                        .map(|i| {
                            lab.reset(b.index).unwrap();
                            let (r, code) =
                                natprobe(lab, &b.hosts[0].ns, &["--server", &servers[i]]);
                            (i, r, code)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut summary = String::new();
    for (i, server) in servers.iter().enumerate() {
        let mut null_count = std::collections::BTreeMap::<&str, u32>::new();
        let mut durations = Vec::new();
        for (b, runs) in impaired.iter().zip(&results) {
            let (_, r, code) = runs.iter().find(|(j, _, _)| *j == i).unwrap();
            let (wrong, nulls) = judge(r, &want);
            assert!(
                wrong.is_empty(),
                "{test} vs {server}, impaired box {}: {wrong:?}\n{r:#}",
                b.index
            );
            if want.nat != "udp-blocked" || nulls.is_empty() {
                assert_eq!(*code, expect_code, "{test} vs {server}: exit code");
            }
            for n in nulls {
                *null_count.entry(n).or_default() += 1;
            }
            durations.push(r["duration_ms"].as_f64().unwrap_or(0.0));
        }
        let _ = write!(
            summary,
            "{{\"test\":\"{test}\",\"server\":\"{server}\",\"runs\":{SEEDS},\"nulls\":{},\"duration_ms\":{:?}}} ",
            serde_json::to_string(&null_count).unwrap(),
            durations.iter().map(|d| d.round()).collect::<Vec<_>>()
        );
    }
    eprintln!("IMPAIRED {summary}");
}

#[test]
fn public_host() {
    let want = Want {
        nat: "none",
        mapping: Some(EI),
        filtering: Some(EI),
        hairpinning: Some(true),
    };
    run("public_host", BoxOpts::new(LabNat::None), false, want);
}

#[test]
fn full_cone() {
    let want = Want {
        nat: "full-cone",
        mapping: Some(EI),
        filtering: Some(EI),
        hairpinning: Some(true),
    };
    run(
        "full_cone",
        BoxOpts::new(LabNat::FullCone).hairpin(true),
        false,
        want,
    );
}

#[test]
fn restricted_cone_per_mapping() {
    let want = Want {
        nat: "restricted-cone",
        mapping: Some(EI),
        filtering: Some(AD),
        hairpinning: Some(false),
    };
    run(
        "restricted_cone_per_mapping",
        BoxOpts::new(LabNat::RestrictedCone),
        false,
        want,
    );
}

#[test]
fn restricted_cone_per_box() {
    let want = Want {
        nat: "restricted-cone",
        mapping: Some(EI),
        filtering: Some(AD),
        hairpinning: Some(true),
    };
    let opts = BoxOpts::new(LabNat::RestrictedCone)
        .filter_state(FilterState::Box)
        .hairpin(true);
    run("restricted_cone_per_box", opts, false, want);
}

#[test]
fn port_restricted_cone() {
    let want = Want {
        nat: "port-restricted-cone",
        mapping: Some(EI),
        filtering: Some(APD),
        hairpinning: Some(false),
    };
    run(
        "port_restricted_cone",
        BoxOpts::new(LabNat::PortRestrictedCone),
        false,
        want,
    );
}

#[test]
fn symmetric() {
    let want = Want {
        nat: "symmetric",
        mapping: Some(APD),
        filtering: Some(APD),
        hairpinning: Some(true),
    };
    run(
        "symmetric",
        BoxOpts::new(LabNat::Symmetric).hairpin(true),
        false,
        want,
    );
}

#[test]
fn udp_blocked() {
    let want = Want {
        nat: "udp-blocked",
        mapping: None,
        filtering: None,
        hairpinning: None,
    };
    run("udp_blocked", BoxOpts::new(LabNat::UdpBlocked), false, want);
}

#[test]
fn ipv6_stateful_firewall() {
    let want = Want {
        nat: "firewall",
        mapping: Some(EI),
        filtering: Some(APD),
        hairpinning: Some(true),
    };
    run(
        "ipv6_stateful_firewall",
        BoxOpts::new(LabNat::PortRestrictedCone),
        true,
        want,
    );
}

#[test]
fn binding_lifetime_within_two_seconds() {
    let test = "binding_lifetime_within_two_seconds";
    if !Lab::ready_or_skip(test) || !common::coturn_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let pr = lab
        .add(1, &BoxOpts::new(LabNat::PortRestrictedCone).lifetime(5))
        .unwrap();
    let fc = lab
        .add(2, &BoxOpts::new(LabNat::FullCone).lifetime(8))
        .unwrap();
    let _sn = start_supernoded(&lab);
    let _coturn = start_coturn(&lab);
    // Four probes in parallel: each uses its own NAT box and server port.
    let jobs: Vec<(u32, &str, String)> = [(&pr, 5u32), (&fc, 8)]
        .into_iter()
        .flat_map(|(b, life)| {
            [SUPERNODE_PORT, COTURN_PORT]
                .map(|p| (life, b.hosts[0].ns.as_str(), format!("198.51.100.1:{p}")))
        })
        .collect();
    std::thread::scope(|s| {
        for (life, ns, server) in &jobs {
            let lab = &lab;
            s.spawn(move || {
                let (r, code) = natprobe(
                    lab,
                    ns,
                    &["--server", server, "--lifetime", "--lifetime-max", "30"],
                );
                assert_eq!(code, 0);
                let got = r["lifetime_s"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no lifetime vs {server}: {r:#}"));
                assert!(
                    (got - f64::from(*life)).abs() <= 2.0,
                    "lifetime {got} s vs {server}, lab says {life} s"
                );
                eprintln!(
                    "LIFETIME lab {life} s, natprobe vs {server}: {got} s {}",
                    r["lifetime_range_s"]
                );
            });
        }
    });
}

#[test]
fn exit_codes_for_bad_usage_and_local_errors() {
    let bin = env!("CARGO_BIN_EXE_natprobe");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(2), "no server is a usage error");
    assert!(String::from_utf8_lossy(&none.stderr).contains("--server"));
    assert_eq!(
        run(&["--server", "127.0.0.1:99999"]).status.code(),
        Some(2),
        "bad port"
    );
    assert_eq!(
        run(&["--server", "no-such-host.invalid"]).status.code(),
        Some(4),
        "unresolvable name"
    );
    let mixed = run(&["--server", "127.0.0.1:3478", "--server", "[::1]:3478", "-4"]);
    assert_eq!(
        mixed.status.code(),
        Some(2),
        "-4 with an IPv6 literal is refused or mixed"
    );
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Exit status") && text.contains("UDP is blocked"),
        "--help documents exit codes"
    );
}
