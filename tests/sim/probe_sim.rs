//! natprobe's state machine against a simulated network (see `sim/mod.rs`): every NAT type, the
//! binding lifetime, heavy loss over many seeds, awkward servers, and determinism.
//!
//! Run `cargo test --test probe_sim -- --nocapture` to see the loss summary table.

use crate::support::probe as sim;

use std::net::SocketAddr;
use std::time::Duration;

use sim::{ServerSpec, Sim};
use voxlab::sim::{Filtering, Mapping, NatConfig, Path};
use voxmesh::nat::{Behavior, NatKind, ProbeConfig, Report, Stage, Timing};

const EIM: Behavior = Behavior::EndpointIndependent;
const EIF: Behavior = Behavior::EndpointIndependent;
const AD: Behavior = Behavior::AddressDependent;
const APD: Behavior = Behavior::AddressAndPortDependent;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(servers: &[SocketAddr], lifetime: bool) -> ProbeConfig {
    ProbeConfig {
        servers: servers.to_vec(),
        lifetime,
        timing: Timing::default(),
    }
}

/// What a correct probe reports for a NAT.
#[derive(Clone, Copy, Debug)]
struct Want {
    nat: NatKind,
    mapping: Behavior,
    filtering: Behavior,
    hairpinning: bool,
    port_preserved: bool,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    nat: NatConfig,
    want: Want,
}

const M_EI: Mapping = Mapping::EndpointIndependent;
const M_AD: Mapping = Mapping::AddressDependent;
const M_APD: Mapping = Mapping::AddressAndPortDependent;
const F_EI: Filtering = Filtering::EndpointIndependent;
const F_AD_MAP: Filtering = Filtering::AddressPerMapping;
const F_AD_BOX: Filtering = Filtering::AddressPerBox;
const F_APD: Filtering = Filtering::AddressAndPortDependent;

/// Every NAT type and what a correct probe says of it, hairpinning on or off (`hp`). An
/// untranslated host always "hairpins": a packet to its own address never leaves it.
fn nat_types(hp: bool) -> Vec<Case> {
    use NatKind::{Firewall, FullCone, PortRestrictedCone, RestrictedCone, Symmetric};
    let (public, firewall) = (NatConfig::public(), NatConfig::firewall());
    let n = |m, f| NatConfig::nat(m, f).hairpin(hp);
    #[rustfmt::skip]
    let rows = [
        // name, box, then the wanted nat, mapping, filtering, hairpinning, port_preserved
        ("public host",              public,             NatKind::None,      EIM, EIF, true, true),
        ("firewall",                 firewall,           Firewall,           EIM, APD, true, true),
        ("full cone",                n(M_EI, F_EI),      FullCone,           EIM, EIF, hp,   true),
        ("restricted, mapping state", n(M_EI, F_AD_MAP),  RestrictedCone,     EIM, AD,  hp,   true),
        ("restricted, box state",    n(M_EI, F_AD_BOX),  RestrictedCone,     EIM, AD,  hp,   true),
        ("port-restricted cone",     n(M_EI, F_APD),     PortRestrictedCone, EIM, APD, hp,   true),
        ("ADM/EIF",                  n(M_AD, F_EI),      Symmetric,          AD,  EIF, hp,   false),
        ("ADM/ADF, mapping state",   n(M_AD, F_AD_MAP),  Symmetric,          AD,  AD,  hp,   false),
        ("ADM/ADF, box state",       n(M_AD, F_AD_BOX),  Symmetric,          AD,  AD,  hp,   false),
        ("ADM/APDF",                 n(M_AD, F_APD),     Symmetric,          AD,  APD, hp,   false),
        ("APDM/EIF",                 n(M_APD, F_EI),     Symmetric,          APD, EIF, hp,   false),
        ("APDM/ADF, mapping state",  n(M_APD, F_AD_MAP), Symmetric,          APD, AD,  hp,   false),
        ("APDM/ADF, box state",      n(M_APD, F_AD_BOX), Symmetric,          APD, AD,  hp,   false),
        ("symmetric (APDM/APDF)",    n(M_APD, F_APD),    Symmetric,          APD, APD, hp,   false),
    ];
    rows.into_iter()
        .map(
            |(name, nat, kind, mapping, filtering, hairpinning, port_preserved)| Case {
                name: format!("{name}, hairpin {}", if hp { "on" } else { "off" }),
                nat,
                want: Want {
                    nat: kind,
                    mapping,
                    filtering,
                    hairpinning,
                    port_preserved,
                },
            },
        )
        .collect()
}

/// Odd variants of port allocation, for the exact table only.
fn port_variants() -> Vec<Case> {
    vec![
        Case {
            name: "port-restricted cone without port preservation".into(),
            nat: NatConfig::nat(M_EI, F_APD).port_preservation(false),
            want: Want {
                nat: NatKind::PortRestrictedCone,
                mapping: EIM,
                filtering: APD,
                hairpinning: false,
                port_preserved: false,
            },
        },
        Case {
            // The first mapping keeps the port, later ones do not: the port says nothing of
            // the mapping behaviour.
            name: "symmetric keeping the port of its first mapping".into(),
            nat: NatConfig::nat(M_APD, F_APD).port_preservation(true),
            want: Want {
                nat: NatKind::Symmetric,
                mapping: APD,
                filtering: APD,
                hairpinning: false,
                port_preserved: true,
            },
        },
    ]
}

/// Asserts the report says exactly what `want` says and leaves nothing undecided.
fn assert_exact(name: &str, r: &Report, want: &Want, sim: &Sim) {
    let got = (
        r.nat,
        r.mapping,
        r.filtering,
        r.hairpinning,
        r.port_preserved,
    );
    let expected = (
        Some(want.nat),
        Some(want.mapping),
        Some(want.filtering),
        Some(want.hairpinning),
        Some(want.port_preserved),
    );
    assert_eq!(
        got, expected,
        "{name}: (nat, mapping, filtering, hairpinning, port_preserved)\n{r:#?}"
    );
    assert!(
        r.undecided.is_empty(),
        "{name}: undecided {:?}",
        r.undecided
    );
    assert_eq!(
        r.mapped_address,
        sim.nat()
            .first_mapping(sim.local(0), sim::rfc5780_primary()),
        "{name}: mapped address"
    );
}

// 1. Every NAT type, exactly.

#[test]
fn every_nat_type_is_classified_exactly() {
    let mut cases: Vec<Case> = nat_types(false);
    cases.extend(nat_types(true));
    cases.extend(port_variants());
    for (seed, case) in cases.iter().enumerate() {
        let mut sim = Sim::new(
            case.nat,
            &[ServerSpec::rfc5780()],
            Path::clean(ms(20)),
            seed as u64,
        );
        let r = sim.run(config(&[sim::rfc5780_primary()], false));
        assert_exact(&case.name, &r, &case.want, &sim);
        assert_eq!(
            r.rfc5780_server,
            Some(sim::rfc5780_primary()),
            "{}",
            case.name
        );
    }
}

#[test]
fn restricted_cone_reads_as_restricted_with_per_box_and_per_mapping_state() {
    // Covered by the table above, but this is the case that a careless test order gets wrong
    // (one packet to A2 from any socket opens a per-box filter to it), so it is pinned by name.
    for filtering in [F_AD_BOX, F_AD_MAP] {
        for hairpin in [false, true] {
            let nat = NatConfig::nat(M_EI, filtering).hairpin(hairpin);
            let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], Path::clean(ms(30)), 7);
            let r = sim.run(config(&[sim::rfc5780_primary()], false));
            assert_eq!(
                r.nat,
                Some(NatKind::RestrictedCone),
                "{filtering:?}: {r:#?}"
            );
            assert_eq!(r.filtering, Some(AD), "{filtering:?}");
            assert!(
                sim.nat().drops.filtered > 0,
                "the filter was never exercised"
            );
        }
    }
}

// 2. Binding lifetime.

#[test]
fn lifetime_is_measured_to_within_a_second() {
    let types = [
        ("full cone", NatConfig::nat(M_EI, F_EI)),
        ("restricted cone (per box)", NatConfig::nat(M_EI, F_AD_BOX)),
        ("port-restricted cone", NatConfig::nat(M_EI, F_APD)),
        ("symmetric", NatConfig::nat(M_APD, F_APD)),
        ("firewall", NatConfig::firewall()),
    ];
    for secs in [3u64, 5, 10, 30, 60] {
        for (name, nat) in types {
            for refresh_inbound in [true, false] {
                let nat = nat
                    .lifetime(Duration::from_secs(secs))
                    .refresh_inbound(refresh_inbound);
                let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], Path::clean(ms(20)), secs);
                let r = sim.run(config(&[sim::rfc5780_primary()], true));
                let what = format!("{name}, lifetime {secs} s, inbound refresh {refresh_inbound}");
                let got = r
                    .lifetime_s
                    .unwrap_or_else(|| panic!("{what}: no lifetime: {:?}", r.undecided));
                assert!(
                    (got - secs as f64).abs() <= 1.0,
                    "{what}: measured {got} s, range {:?}",
                    r.lifetime_range_s
                );
                let [lo, hi] = r.lifetime_range_s.expect("a range with the estimate");
                assert!(
                    lo <= secs as f64 && secs as f64 <= hi,
                    "{what}: [{lo}, {hi}]"
                );
                assert!(r.undecided.is_empty(), "{what}: {:?}", r.undecided);
                // It takes one lifetime plus a step or two, not a search's many.
                assert!(
                    sim.elapsed() < Duration::from_secs(secs + 7),
                    "{what}: took {:?}",
                    sim.elapsed()
                );
            }
        }
    }
}

#[test]
fn lifetime_of_a_public_host_is_reported_unmeasurable() {
    let mut sim = Sim::new(
        NatConfig::public(),
        &[ServerSpec::rfc5780()],
        Path::clean(ms(20)),
        1,
    );
    let r = sim.run(config(&[sim::rfc5780_primary()], true));
    assert_eq!(r.nat, Some(NatKind::None));
    assert_eq!((r.lifetime_s, r.lifetime_range_s), (None, None));
    assert!(
        r.undecided.iter().any(|u| u.starts_with("lifetime:")),
        "{:?}",
        r.undecided
    );
}

#[test]
fn lifetime_under_loss_stays_within_its_range() {
    // Lost answers make a probe point retry over several RTOs; an expiry is only known once the
    // last retry went unanswered, and the range says so.
    let path = Path::symmetric(ms(75), ms(20), 0.2);
    let mut worst = 0.0f64;
    for secs in [5u64, 30] {
        for seed in 0..30 {
            let nat = NatConfig::nat(M_EI, F_APD).lifetime(Duration::from_secs(secs));
            let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], path, seed);
            let r = sim.run(config(&[sim::rfc5780_primary()], true));
            let what = format!("lifetime {secs} s, seed {seed}");
            let got = r
                .lifetime_s
                .unwrap_or_else(|| panic!("{what}: {:?}", r.undecided));
            let [lo, hi] = r.lifetime_range_s.expect("a range with the estimate");
            assert!(
                lo <= secs as f64 && secs as f64 <= hi,
                "{what}: [{lo}, {hi}]"
            );
            worst = worst.max((got - secs as f64).abs());
        }
    }
    println!("lifetime under 20% loss and 150 ms RTT: worst error {worst:.2} s");
    assert!(worst <= 1.5, "worst error {worst} s");
}

#[test]
fn lifetime_under_worst_case_loss_is_null_or_right() {
    // 50% loss each way: a binding point whose probes all went unanswered is called expired
    // only when that many lost answers are improbable given the controls (the rule of every
    // "no", see `nat::Timing`). Regression: five unanswered tries were taken as an expiry, which
    // a live binding gives one time in four at this loss (0.75^5), so the search stopped early
    // and reported a lifetime far too short.
    let path = Path::symmetric(ms(75), ms(20), 0.5);
    let (mut nulls, mut wrong, mut worst) = (0, Vec::new(), 0.0f64);
    let runs = 40;
    for seed in 0..runs {
        let secs = [5u64, 30][seed as usize % 2];
        let nat = NatConfig::nat(M_EI, F_APD).lifetime(Duration::from_secs(secs));
        let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], path, 500 + seed);
        let r = sim.run(config(&[sim::rfc5780_primary()], true));
        match (r.lifetime_s, r.lifetime_range_s) {
            (Some(got), Some([lo, hi])) => {
                if !(lo <= secs as f64 && secs as f64 <= hi) {
                    wrong.push(format!("lifetime {secs} s, seed {seed}: [{lo}, {hi}]"));
                }
                worst = worst.max((got - secs as f64).abs());
            }
            _ => nulls += 1,
        }
    }
    println!(
        "lifetime under 50% loss and 150 ms RTT: {nulls} of {runs} null, worst error {worst:.2} s"
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(nulls < runs / 2, "{nulls} of {runs} null");
}

#[test]
fn lifetime_expiring_at_the_last_point_of_the_schedule_does_not_hang() {
    // Regression: the stop rule ran before the last expiry was recorded, and with no timer left
    // the probe waited forever (a 120 s conntrack stream timeout hit it).
    let nat = |secs| NatConfig::nat(M_EI, F_APD).lifetime(Duration::from_secs(secs));
    for secs in [118, 120] {
        let mut sim = Sim::new(nat(secs), &[ServerSpec::rfc5780()], Path::clean(ms(20)), 1);
        let r = sim.run(config(&[sim::rfc5780_primary()], true));
        let [lo, hi] = r.lifetime_range_s.expect("a range");
        assert!(
            lo <= secs as f64 && secs as f64 <= hi,
            "{secs} s: [{lo}, {hi}]"
        );
    }
    // Longer than the search: said so, not guessed.
    let mut sim = Sim::new(nat(150), &[ServerSpec::rfc5780()], Path::clean(ms(20)), 1);
    let r = sim.run(config(&[sim::rfc5780_primary()], true));
    assert_eq!(r.lifetime_s, None);
    assert!(
        r.undecided.iter().any(|u| u.contains("longer than")),
        "{:?}",
        r.undecided
    );
}

#[test]
fn lifetime_without_any_binding_does_not_hang() {
    // Regression: when every lifetime socket gave up on getting a binding (the server died),
    // nothing was left to wait for, yet the probe never finished.
    let nat = NatConfig::nat(M_EI, F_APD);
    let run = |fail_at: Option<Duration>| {
        let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], Path::clean(ms(20)), 4);
        if let Some(t) = fail_at {
            sim.servers_fail_at(t);
        }
        let r = sim.run(config(&[sim::rfc5780_primary()], true));
        (r, sim.stages)
    };
    // The run is deterministic: find when the lifetime stage begins, then kill the server then.
    let (_, stages) = run(None);
    let start = stages
        .iter()
        .find(|(_, s)| matches!(s, Stage::Lifetime(_)))
        .expect("a lifetime stage")
        .0;
    let (r, _) = run(Some(start));
    assert_eq!(r.nat, Some(NatKind::PortRestrictedCone));
    assert_eq!(r.lifetime_s, None);
    assert!(
        r.undecided.iter().any(|u| u.starts_with("lifetime:")),
        "{:?}",
        r.undecided
    );
}

#[test]
fn lifetime_against_a_server_without_response_port_is_reported_unmeasurable() {
    let nat = NatConfig::nat(M_EI, F_APD);
    let mut sim = Sim::new(
        nat,
        &[ServerSpec::plain(sim::plain_a())],
        Path::clean(ms(20)),
        1,
    );
    let r = sim.run(config(&[sim::plain_a()], true));
    assert_eq!(r.lifetime_s, None);
    assert!(
        r.undecided.iter().any(|u| u.starts_with("lifetime:")),
        "{:?}",
        r.undecided
    );
}

// 3. Heavy loss over many seeds: never wrong, rarely null.

/// Nulls, wrong answers and durations over the seeds of one NAT type.
#[derive(Default)]
struct Tally {
    runs: u32,
    nulls: [u32; 5],
    undecided_runs: u32,
    durations_ms: Vec<f64>,
    /// Datagrams the path carried and lost, up and down: proof the impairment was applied.
    path: [u64; 4],
    /// Every wrong property, as "name, seed: what".
    wrong: Vec<String>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.runs += o.runs;
        self.undecided_runs += o.undecided_runs;
        for i in 0..5 {
            self.nulls[i] += o.nulls[i];
        }
        for i in 0..4 {
            self.path[i] += o.path[i];
        }
        self.durations_ms.extend(&o.durations_ms);
        self.wrong.extend(o.wrong.iter().cloned());
    }

    fn null_rate(&self, i: usize) -> f64 {
        self.nulls[i] as f64 / self.runs as f64
    }

    /// One line of the summary table.
    fn row(&self, name: &str) -> String {
        let mut d = self.durations_ms.clone();
        d.sort_by(f64::total_cmp);
        let pct = |x: f64| format!("{:>9.1}%", 100.0 * x);
        let mut out = format!("{name:<40}");
        for i in 0..5 {
            out += &pct(self.null_rate(i));
        }
        out += &pct(self.undecided_runs as f64 / self.runs as f64);
        out += &format!("{:>8.0}{:>8.0}", percentile(&d, 0.5), percentile(&d, 0.99));
        out += &pct(self.path[1] as f64 / self.path[0] as f64);
        out += &pct(self.path[3] as f64 / self.path[2] as f64);
        out += &format!("{:>7}", self.wrong.len());
        out + "\n"
    }
}

const PROPS: [&str; 5] = ["nat", "mapping", "filtering", "hairpin", "port_kept"];

/// Tallies the nulls of `r` and every property that is neither null nor right. `server` is the
/// one the mapped address was reported by.
fn tally(
    name: &str,
    seed: u64,
    r: &Report,
    want: &Want,
    sim: &Sim,
    server: SocketAddr,
    t: &mut Tally,
) {
    let facts = [
        (r.nat == Some(want.nat), r.nat.is_none()),
        (r.mapping == Some(want.mapping), r.mapping.is_none()),
        (r.filtering == Some(want.filtering), r.filtering.is_none()),
        (
            r.hairpinning == Some(want.hairpinning),
            r.hairpinning.is_none(),
        ),
        (
            r.port_preserved == Some(want.port_preserved),
            r.port_preserved.is_none(),
        ),
    ];
    let got = [
        format!("{:?}", r.nat),
        format!("{:?}", r.mapping),
        format!("{:?}", r.filtering),
        format!("{:?}", r.hairpinning),
        format!("{:?}", r.port_preserved),
    ];
    for (i, (right, null)) in facts.into_iter().enumerate() {
        if !(right || null) {
            t.wrong
                .push(format!("{name}, seed {seed}: {} = {}", PROPS[i], got[i]));
        }
        t.nulls[i] += null as u32;
    }
    if let Some(m) = r.mapped_address
        && Some(m) != sim.nat().first_mapping(sim.local(0), server)
    {
        t.wrong
            .push(format!("{name}, seed {seed}: mapped address {m}"));
    }
    t.runs += 1;
    t.undecided_runs += !r.undecided.is_empty() as u32;
    t.durations_ms.push(r.duration_ms);
    let st = sim.stats();
    for (i, n) in [st.sent_up, st.lost_up, st.sent_down, st.lost_down]
        .into_iter()
        .enumerate()
    {
        t.path[i] += n;
    }
}

/// Asserts every property of `r` is either null or right.
fn check_never_wrong(
    name: &str,
    seed: u64,
    r: &Report,
    want: &Want,
    sim: &Sim,
    server: SocketAddr,
) {
    let mut t = Tally::default();
    tally(name, seed, r, want, sim, server, &mut t);
    assert!(
        t.wrong.is_empty(),
        "wrong: {:?}; want {want:?}\n{r:#?}",
        t.wrong
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Probes every NAT type over `seeds` seeds of `path` (hairpinning on for odd seeds) and returns
/// each type's tally, the total and the printed table.
fn sweep(path: Path, seeds: u64, title: &str) -> (Vec<(String, Tally)>, Tally, String) {
    let with_hairpin = [nat_types(false), nat_types(true)];
    // All seeds of NAT type `k`, hairpinning on for odd seeds. Every type gets seeds of its own:
    // with shared seeds the first phase (the same for every type) would repeat its losses
    // exactly, and the types would be one sample of it, not fourteen.
    let one_type = |k: usize| {
        let mut t = Tally::default();
        for i in 0..seeds {
            let seed = k as u64 * 1_000_000 + i;
            let case = &with_hairpin[i as usize % 2][k];
            let mut sim = Sim::new(case.nat, &[ServerSpec::rfc5780()], path, seed);
            let r = sim.run(config(&[sim::rfc5780_primary()], false));
            let server = sim::rfc5780_primary();
            tally(&case.name, seed, &r, &case.want, &sim, server, &mut t);
        }
        (with_hairpin[0][k].name.replace(", hairpin off", ""), t)
    };
    // Two threads: the suite has two cores and these tests are most of its time.
    let n = with_hairpin[0].len();
    let tallies: Vec<(String, Tally)> = std::thread::scope(|s| {
        let first = s.spawn(|| (0..n / 2).map(one_type).collect::<Vec<_>>());
        let second: Vec<_> = (n / 2..n).map(one_type).collect();
        let mut all = first.join().expect("worker");
        all.extend(second);
        all
    });

    let mut out = format!(
        "\nnatprobe, {title}, {seeds} seeds per type (hairpin on/off alternating): share of runs \
         with each property null, probe duration, path loss seen, wrong answers\n\
         {:<40}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}{:>8}{:>10}{:>10}{:>7}\n",
        "NAT type",
        "nat",
        "mapping",
        "filtering",
        "hairpin",
        "port_kept",
        "undecided",
        "p50 ms",
        "p99 ms",
        "loss up",
        "loss down",
        "wrong"
    );
    let mut total = Tally::default();
    for (name, t) in &tallies {
        out += &t.row(name);
        total.add(t);
    }
    out += &total.row(&format!("all ({} runs)", total.runs));
    for w in &total.wrong {
        out += &format!("WRONG {w}\n");
    }
    println!("{out}");
    (tallies, total, out)
}

/// Asserts the path lost what it was configured to, both ways.
fn assert_path_loss(total: &Tally, loss: f64) {
    let up = total.path[1] as f64 / total.path[0] as f64;
    let down = total.path[3] as f64 / total.path[2] as f64;
    let ok = |x: f64| (x - loss).abs() < 0.02;
    assert!(ok(up) && ok(down), "loss up {up}, down {down}, want {loss}");
}

#[test]
fn heavy_loss_never_gives_a_wrong_answer() {
    // 20% loss each way (the goal), 75 ms each way plus up to 20 ms of jitter: 150-190 ms RTT.
    let path = Path::symmetric(ms(75), ms(20), 0.2);
    let (tallies, total, out) = sweep(path, 500, "20% loss each way, 150-190 ms RTT");
    assert!(total.wrong.is_empty(), "wrong answers{out}");
    for (name, t) in &tallies {
        for (i, prop) in PROPS.iter().enumerate() {
            let rate = t.null_rate(i);
            assert!(
                rate < 0.05,
                "{name}: {prop} null in {:.1}% of runs{out}",
                100.0 * rate
            );
        }
    }
    assert_path_loss(&total, 0.2);
}

#[test]
fn worst_case_loss_never_gives_a_wrong_answer() {
    // 50% loss each way, the worst case the probe is designed for (see `nat::Timing`): a round
    // trip gets through one time in four. Nulls are allowed here; wrong answers are not.
    // Regression: a silent server was declared unreachable after 1.5 s of 100 ms-paced requests,
    // 14 whose answers could be back in time, all lost with probability 0.75^14 = 1.8%: 16 of
    // the first 560 of these runs (and a per-box restricted cone in the lab) reported a
    // reachable NAT as UDP blocked. Now 33 requests in the same 1.5 s: 0.75^33 = 7.5e-5.
    let path = Path::symmetric(ms(75), ms(20), 0.5);
    let (tallies, total, out) = sweep(path, 100, "50% loss each way, 150-190 ms RTT");
    assert!(total.wrong.is_empty(), "wrong answers{out}");
    // Not everything null either: the nat verdict is decided in most runs of every type (about
    // 2% null over all types at 1000 seeds).
    for (name, t) in &tallies {
        assert!(t.null_rate(0) < 0.2, "{name}: nat null too often{out}");
    }
    assert_path_loss(&total, 0.5);
}

// 4. Blocked UDP and awkward servers.

#[test]
fn udp_blocked_is_decided_within_the_budget() {
    let t = Timing::default();
    let lists: [&[SocketAddr]; 3] = [
        &[sim::rfc5780_primary()],
        &[sim::rfc5780_primary(), sim::plain_a()],
        &[sim::plain_a(), sim::plain_b(), sim::rfc5780_primary()],
    ];
    for servers in lists {
        let specs = [
            ServerSpec::rfc5780(),
            ServerSpec::plain(sim::plain_a()),
            ServerSpec::plain(sim::plain_b()),
        ];
        let mut sim = Sim::new(NatConfig::blocked(), &specs, Path::clean(ms(20)), 3);
        let r = sim.run(config(servers, false));
        assert_eq!(
            r.nat.map(NatKind::as_str),
            Some("udp-blocked"),
            "{servers:?}: {r:#?}"
        );
        let limit = t.blocked_budget
            + if servers.len() > 1 {
                t.stagger
            } else {
                Duration::ZERO
            };
        assert!(
            sim.elapsed() <= limit,
            "{servers:?}: took {:?}, budget {limit:?}",
            sim.elapsed()
        );
        assert!(r.duration_ms <= limit.as_secs_f64() * 1e3);
        // Every server got the requests the 1e-4 bound needs, and no more.
        for srv in &r.servers {
            assert_eq!(srv.requests, t.blocked_probes(), "{servers:?}: {srv:?}");
        }
    }
}

#[test]
fn a_dead_server_does_not_spoil_the_result() {
    for case in nat_types(true) {
        for dead_first in [false, true] {
            let servers = if dead_first {
                [sim::dead(), sim::rfc5780_primary()]
            } else {
                [sim::rfc5780_primary(), sim::dead()]
            };
            let mut sim = Sim::new(
                case.nat,
                &[ServerSpec::rfc5780(), ServerSpec::dead(sim::dead())],
                Path::clean(ms(40)),
                11,
            );
            let r = sim.run(config(&servers, false));
            let name = format!(
                "{}, dead server {}",
                case.name,
                if dead_first { "first" } else { "second" }
            );
            assert_exact(&name, &r, &case.want, &sim);
            let dead = r.servers.iter().find(|s| s.address == sim::dead()).unwrap();
            assert_eq!((dead.responses, dead.rtt_ms), (0, None), "{name}");
            assert!(
                sim.stats().to_dead_server > 0,
                "{name}: dead server never tried"
            );
        }
    }
}

#[test]
fn a_server_without_an_alternate_address_leaves_filtering_open() {
    for case in nat_types(false) {
        let mut sim = Sim::new(
            case.nat,
            &[ServerSpec::plain(sim::plain_a())],
            Path::clean(ms(20)),
            5,
        );
        let r = sim.run(config(&[sim::plain_a()], false));
        assert_eq!(r.filtering, None, "{}", case.name);
        assert!(
            r.undecided.iter().any(|u| u.starts_with("filtering:")),
            "{}: {:?}",
            case.name,
            r.undecided
        );
        // Hairpinning and the port are still tested against the one server.
        assert_eq!(r.hairpinning, Some(case.want.hairpinning), "{}", case.name);
        assert_eq!(
            r.port_preserved,
            Some(case.want.port_preserved),
            "{}",
            case.name
        );
        if case.nat.translate {
            assert_eq!(r.nat, None, "{}", case.name);
        }
    }
}

#[test]
fn ordinary_servers_give_the_mapping() {
    let plain = [
        ServerSpec::plain(sim::plain_a()),
        ServerSpec::plain(sim::plain_b()),
        ServerSpec::plain(sim::plain_a_port2()),
    ];
    let two_ips = [sim::plain_a(), sim::plain_b()];
    let same_ip = [sim::plain_a(), sim::plain_a_port2()];
    let three = [sim::plain_a(), sim::plain_b(), sim::plain_a_port2()];
    // (servers, mapping, nat wanted) by the NAT's mapping behaviour. Two IPs tell EIM from "not
    // EIM" (enough to call it symmetric); one IP on two ports tells port dependence; all three
    // tell address dependence.
    type Row<'a> = (&'a [SocketAddr], Option<Behavior>, Option<NatKind>);
    let table: [(Mapping, [Row; 3]); 3] = [
        (
            M_EI,
            [
                (&two_ips, Some(EIM), None),
                (&same_ip, None, None),
                (&three, Some(EIM), None),
            ],
        ),
        (
            M_AD,
            [
                (&two_ips, None, Some(NatKind::Symmetric)),
                (&same_ip, None, None),
                (&three, Some(AD), Some(NatKind::Symmetric)),
            ],
        ),
        (
            M_APD,
            [
                (&two_ips, None, Some(NatKind::Symmetric)),
                (&same_ip, Some(APD), Some(NatKind::Symmetric)),
                (&three, Some(APD), Some(NatKind::Symmetric)),
            ],
        ),
    ];
    for (mapping, rows) in table {
        for (servers, want_mapping, want_nat) in rows {
            let nat = NatConfig::nat(mapping, F_APD);
            let mut sim = Sim::new(nat, &plain, Path::clean(ms(25)), 9);
            let r = sim.run(config(servers, false));
            let name = format!("{mapping:?} against {servers:?}");
            assert_eq!(r.mapping, want_mapping, "{name}: {r:#?}");
            assert_eq!(r.nat, want_nat, "{name}: {r:#?}");
            assert_eq!(r.filtering, None, "{name}");
            if want_mapping.is_none() && want_nat.is_none() {
                assert!(
                    r.undecided.iter().any(|u| u.starts_with("mapping:")),
                    "{name}: {:?}",
                    r.undecided
                );
            }
        }
    }
}

#[test]
fn a_server_ignoring_change_request_never_reads_as_open() {
    for case in nat_types(false) {
        for seed in 0..4 {
            let path = if seed == 0 {
                Path::clean(ms(20))
            } else {
                Path::symmetric(ms(75), ms(20), 0.2)
            };
            let mut sim = Sim::new(case.nat, &[ServerSpec::ignores_change()], path, seed);
            let r = sim.run(config(&[sim::rfc5780_primary()], false));
            let name = format!("{}, seed {seed}", case.name);
            assert_eq!(r.filtering, None, "{name}: {r:#?}");
            assert!(
                r.undecided
                    .iter()
                    .any(|u| u.starts_with("filtering:") && u.contains("CHANGE-REQUEST")),
                "{name}: {:?}",
                r.undecided
            );
            // The mapping tests do not need CHANGE-REQUEST.
            if seed == 0 {
                assert_eq!(r.mapping, Some(case.want.mapping), "{name}");
            }
            assert!(r.mapping.is_none_or(|m| m == case.want.mapping), "{name}");
        }
    }
}

#[test]
fn listing_the_alternate_ip_as_a_server_does_not_open_a_per_box_restricted_cone() {
    let nat = NatConfig::nat(M_EI, F_AD_BOX);
    let servers = [sim::rfc5780_primary(), sim::rfc5780_alt_ip()];
    // Clean path: the exact answer.
    let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], Path::clean(ms(20)), 1);
    let r = sim.run(config(&servers, false));
    assert_eq!(r.nat, Some(NatKind::RestrictedCone), "{r:#?}");
    assert_eq!(r.filtering, Some(AD));
    assert!(r.undecided.is_empty(), "{:?}", r.undecided);
    // Both orders, impaired paths: never full cone.
    for seed in 0..60 {
        let servers = if seed % 2 == 0 {
            servers
        } else {
            [servers[1], servers[0]]
        };
        let path = Path::symmetric(ms(75), ms(20), 0.2);
        let mut sim = Sim::new(nat, &[ServerSpec::rfc5780()], path, seed);
        let r = sim.run(config(&servers, false));
        assert!(
            r.filtering.is_none_or(|f| f == AD),
            "seed {seed}, servers {servers:?}: {r:#?}"
        );
        assert!(
            r.nat.is_none_or(|n| n == NatKind::RestrictedCone),
            "seed {seed}: {r:#?}"
        );
    }
}

#[test]
fn a_server_listed_on_the_alternate_port_does_not_make_a_port_restricted_cone_restricted() {
    // Regression: a packet from the main socket to A1:p2 let the CHANGE-REQUEST(port) answers
    // through an address-and-port-dependent filter, so port-restricted read as restricted.
    let a1_p2 = SocketAddr::new(sim::rfc5780_primary().ip(), 3479);
    for case in nat_types(false) {
        let mut sim = Sim::new(case.nat, &[ServerSpec::rfc5780()], Path::clean(ms(20)), 1);
        let r = sim.run(config(&[sim::rfc5780_primary(), a1_p2], false));
        assert_exact(&case.name, &r, &case.want, &sim);
        for seed in 0..10 {
            let path = Path::symmetric(ms(75), ms(20), 0.2);
            let mut sim = Sim::new(case.nat, &[ServerSpec::rfc5780()], path, seed);
            let r = sim.run(config(&[sim::rfc5780_primary(), a1_p2], false));
            check_never_wrong(
                &case.name,
                seed,
                &r,
                &case.want,
                &sim,
                sim::rfc5780_primary(),
            );
        }
    }
}

#[test]
fn a_non_primary_socket_of_an_rfc5780_server_never_misreads_the_nat() {
    // Our server names its configured alternate (A2:p2) as OTHER-ADDRESS whichever socket is
    // asked. Asked on A1:p2, A2:p1 or A2:p2, that is not the diagonal socket RFC 5780 §7.4
    // means, and the probe must not run the tests against it (it read symmetric NATs as cones).
    let sockets = [
        SocketAddr::new(sim::rfc5780_primary().ip(), 3479),
        sim::rfc5780_alt_ip(),
        sim::rfc5780_alternate(),
    ];
    for server in sockets {
        for case in nat_types(false) {
            let mut sim = Sim::new(case.nat, &[ServerSpec::rfc5780()], Path::clean(ms(20)), 1);
            let r = sim.run(config(&[server], false));
            check_never_wrong(
                &format!("{} via {server}", case.name),
                1,
                &r,
                &case.want,
                &sim,
                server,
            );
        }
    }
}

// 5. Determinism.

#[test]
fn the_same_seed_gives_the_same_report() {
    let nat = NatConfig::nat(M_APD, F_AD_BOX).hairpin(true);
    let path = Path::symmetric(ms(75), ms(20), 0.2);
    let run = |seed| {
        let specs = [ServerSpec::rfc5780(), ServerSpec::plain(sim::plain_a())];
        let mut sim = Sim::new(nat, &specs, path, seed);
        let r = sim.run(config(&[sim::rfc5780_primary(), sim::plain_a()], false));
        (r, sim.elapsed(), sim.nat().history.clone())
    };
    for seed in [1, 2, 42] {
        assert_eq!(run(seed), run(seed), "seed {seed}");
    }
    // And the seed matters: different seeds give different runs.
    assert_ne!(run(1), run(2));
}
