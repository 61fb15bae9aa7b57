//! `voxlab demo`: the README's first command. Builds a lab with one box of every NAT type,
//! starts `supernoded` in the server namespace, runs `natprobe` behind each box at once, and
//! prints what the lab built next to what natprobe found; then places calls between boxes
//! ([`crate::demo_calls`]). Without the lab (no root), one call on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::{BoxOpts, FilterState, Lab, LabNat};

/// One row of the demo: a box and what natprobe must find behind it.
struct Row {
    label: &'static str,
    opts: BoxOpts,
    v6: bool,
    want: [&'static str; 4],
}

const EI: &str = "endpoint-independent";
const AD: &str = "address-dependent";
const APD: &str = "address-and-port-dependent";

fn rows() -> Vec<Row> {
    let b = BoxOpts::new;
    vec![
        Row {
            label: "public host",
            opts: b(LabNat::None),
            v6: false,
            want: ["none", EI, EI, "yes"],
        },
        Row {
            label: "full cone + hairpin",
            opts: b(LabNat::FullCone).hairpin(true),
            v6: false,
            want: ["full-cone", EI, EI, "yes"],
        },
        Row {
            label: "restricted cone",
            opts: b(LabNat::RestrictedCone),
            v6: false,
            want: ["restricted-cone", EI, AD, "no"],
        },
        Row {
            label: "restricted, per-box state",
            opts: b(LabNat::RestrictedCone).filter_state(FilterState::Box),
            v6: false,
            want: ["restricted-cone", EI, AD, "no"],
        },
        Row {
            label: "port-restricted cone",
            opts: b(LabNat::PortRestrictedCone),
            v6: false,
            want: ["port-restricted-cone", EI, APD, "no"],
        },
        Row {
            label: "symmetric + hairpin",
            opts: b(LabNat::Symmetric).hairpin(true),
            v6: false,
            want: ["symmetric", APD, APD, "yes"],
        },
        Row {
            label: "UDP blocked",
            opts: b(LabNat::UdpBlocked),
            v6: false,
            want: ["udp-blocked", "-", "-", "-"],
        },
        Row {
            label: "IPv6 stateful firewall",
            opts: b(LabNat::PortRestrictedCone),
            v6: true,
            want: ["firewall", EI, APD, "yes"],
        },
    ]
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find my own executable")?;
    let p = me.with_file_name(name);
    if !Path::new(&p).exists() {
        bail!(
            "{} not found next to voxlab: build all binaries (cargo build --release --bins)",
            p.display()
        );
    }
    Ok(p)
}

/// Runs the demo; returns whether every answer matched the lab.
pub fn run() -> anyhow::Result<bool> {
    if let Err(why) = Lab::available() {
        println!("No lab here ({why}).\nPlacing a call on loopback instead.\n");
        return crate::demo_calls::on_loopback();
    }
    let supernoded = sibling("supernoded")?;
    let natprobe = sibling("natprobe")?;
    let rows = rows();
    println!(
        "Building the lab: a server with two addresses and {} NAT boxes ...",
        rows.len()
    );
    let mut lab = Lab::new()?;
    let mut infos = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        infos.push(lab.add(i as u32 + 1, &r.opts)?);
    }
    // A second symmetric NAT for the relayed call (no direct path between two of them).
    let second_symmetric = lab.add(rows.len() as u32 + 1, &BoxOpts::new(LabNat::Symmetric))?;
    let mut sn = lab
        .command(&lab.server_ns(), &supernoded)
        .args([
            // STUN is all the demo needs; the directory would need an identity of its own.
            "--stun-only",
            "--listen",
            "198.51.100.1:3478",
            "--alt-addr",
            "198.51.100.2:3479",
        ])
        .args([
            "--listen",
            "[2001:db8::1]:3478",
            "--alt-addr",
            "[2001:db8::2]:3479",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start supernoded")?;
    let mut line = String::new();
    BufReader::new(sn.stdout.take().expect("piped")).read_line(&mut line)?;
    let _sn = Killed(sn);
    println!("supernoded is serving STUN + RFC 5780 on 198.51.100.1/.2 and 2001:db8::1/::2");
    println!("Running natprobe behind every box at once ...\n");

    let results: Vec<anyhow::Result<(serde_json::Value, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .iter()
            .zip(&infos)
            .map(|(r, info)| {
                let (lab, natprobe) = (&lab, &natprobe);
                s.spawn(move || {
                    let server = if r.v6 {
                        "[2001:db8::1]:3478"
                    } else {
                        "198.51.100.1:3478"
                    };
                    let t0 = Instant::now();
                    let out = lab
                        .command(&info.hosts[0].ns, natprobe)
                        .args(["--json", "--server", server])
                        .output()?;
                    let secs = t0.elapsed().as_secs_f64();
                    let json =
                        serde_json::from_slice(&out.stdout).context("natprobe printed no JSON")?;
                    Ok((json, secs))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });

    println!(
        "{:<26} {:<21} {:<27} {:<27} {:<9} {:>7}",
        "lab built", "natprobe: nat", "mapping", "filtering", "hairpin", "time"
    );
    let mut all_ok = true;
    for (r, res) in rows.iter().zip(results) {
        let (j, secs) = res?;
        let s = |k: &str| j[k].as_str().unwrap_or("-").to_string();
        let hp = match j["hairpinning"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let got = [s("nat"), s("mapping"), s("filtering"), hp.to_string()];
        let ok = got.iter().zip(r.want).all(|(g, w)| g == w);
        all_ok &= ok;
        println!(
            "{:<26} {:<21} {:<27} {:<27} {:<9} {:>5.0}ms {}",
            r.label,
            got[0],
            got[1],
            got[2],
            got[3],
            secs * 1e3,
            if ok { "ok" } else { "WRONG" }
        );
    }
    println!(
        "\n{}",
        if all_ok {
            "Every NAT was classified correctly. (UDP blocked is decided after 1.5 s of silence.)"
        } else {
            "Some answers were wrong: see the rows marked WRONG."
        }
    );

    // Calls: a pair that punches through, and one that needs the relay.
    use crate::demo_calls::{Place, place_call, report, speech, start_servers, tempfile_dir};
    let dir = tempfile_dir()?;
    let server_ns = lab.server_ns();
    let servers = start_servers(
        Place::Ns(&lab, &server_ns),
        &dir,
        "198.51.100.1:3490",
        Some("198.51.100.2:3490"),
    )?;
    let (speech, what) = speech(&dir)?;
    let host = |label: &str| -> anyhow::Result<String> {
        let i = rows
            .iter()
            .position(|r| r.label == label)
            .with_context(|| format!("no box {label:?}"))?;
        Ok(infos[i].hosts[0].ns.clone())
    };
    let (cone, port_restricted, symmetric) = (
        host("full cone + hairpin")?,
        host("port-restricted cone")?,
        host("symmetric + hairpin")?,
    );
    println!(
        "\nCalls: a supernode and a relay on the lab's internet; each caller plays {what} ..."
    );
    let calls = [
        (
            &cone,
            &port_restricted,
            "full cone -> port-restricted cone",
            "direct",
        ),
        (
            &symmetric,
            &second_symmetric.hosts[0].ns,
            "symmetric -> symmetric",
            "relayed",
        ),
    ];
    let mut results = Vec::new();
    for (from, to, label, _) in &calls {
        results.push(place_call(
            Place::Ns(&lab, from),
            Place::Ns(&lab, to),
            &servers.node,
            &dir,
            label,
            &speech,
        )?);
    }
    let want: Vec<&str> = calls.iter().map(|c| c.3).collect();
    let calls_ok = report(&results, &want);
    // VOXLAB_KEEP keeps the scratch directory (recordings, the speech played) for a look.
    if std::env::var_os("VOXLAB_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(all_ok && calls_ok)
}
