//! `voxlab sim`: a population of clients on the simulated network, driving the real cores (client
//! agents, supernodes, relay links) through churn, promotion and calls, reported as one JSON
//! document (issue 13's simulator). See [`engine`] for what is real and what is abstracted.
//!
//! Abstracted: media (a relayed call is a slot on its relay for its length), ICE (the path is
//! decided from the two NAT types), TURN allocations (relay load is counted by the simulator and
//! reported to the supernodes through the real relay link), and the promotion decision, which is
//! a clearly marked stand-in ([`promote::StandIn`]) until the product's promoter lands.

pub mod engine;
pub mod promote;
pub mod stats;
pub mod svg;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use engine::Promotion;
use engine::{Engine, NatKind, Sample, Work};
use promote::StandIn;
use stats::{Dist, ratio, round};

/// `voxlab sim` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Online clients at the start; arrivals keep the mean there (steady churn).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Simulated minutes.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seed for every random choice: the same seed gives the same JSON (but for `run`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Median session length, minutes (lognormal; heavy-tailed with --session-sigma).
    #[arg(long, default_value_t = 10.0)]
    pub session_median: f64,
    /// Sigma of the lognormal session length (1.5: mean about 3× the median).
    #[arg(long, default_value_t = 1.5)]
    pub session_sigma: f64,
    /// Calls each online user places per simulated hour, to a random online user.
    #[arg(long, default_value_t = 1.0)]
    pub calls_per_hour: f64,
    /// Users each client watches (its contacts; presence latency is measured on them).
    #[arg(long, default_value_t = 2)]
    pub watches: usize,
    /// Who promotes: the product's promoter (`real`) or the simulator's stand-in policy.
    #[arg(long, value_enum, default_value_t = Promotion::Real)]
    pub promotion: Promotion,
    /// Registered clients per supernode the mesh's need aims for (the supernodes' default).
    #[arg(long, default_value_t = 200)]
    pub clients_per_supernode: usize,
    /// A supernode's configured load limit (registered clients), reported against.
    #[arg(long, default_value_t = 2000)]
    pub supernode_max_clients: usize,
    /// Minimum tenure of a promoted node before a surplus may demote it, seconds (default: the
    /// promoter's own, 1800).
    #[arg(long)]
    pub min_tenure: Option<u64>,
    /// Seconds of arrivals of the initial population (samples start after it).
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    pub sample_every: u64,
    /// Loss on every access link, each way (0.002 = 0.2 %). Above 0, two runs of one seed may
    /// differ slightly: the cores emit bursts in hash-map order, which std randomises per
    /// process, and a loss then falls on another datagram of the burst.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Print the JSON report (else a short summary).
    #[arg(long)]
    pub json: bool,
    /// Write SVG plots into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

impl SimArgs {
    /// The defaults `--help` states.
    pub fn defaults() -> SimArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: SimArgs,
        }
        <P as clap::Parser>::parse_from(["sim"]).a
    }
}

/// The simulation's settings (from [`SimArgs`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
    pub session_median: Duration,
    pub session_sigma: f64,
    pub calls_per_hour: f64,
    pub watches: usize,
    pub clients_per_supernode: usize,
    pub sn_max_clients: usize,
    pub sn_max_records: usize,
    pub min_tenure: Duration,
    pub warmup: Duration,
    pub sample_every: Duration,
    pub loss: f64,
}

impl Config {
    pub fn from_args(a: &SimArgs) -> Config {
        Config {
            clients: a.clients.max(10),
            duration: Duration::from_secs_f64(a.minutes * 60.0),
            seed: a.seed,
            session_median: Duration::from_secs_f64(a.session_median * 60.0),
            session_sigma: a.session_sigma,
            calls_per_hour: a.calls_per_hour,
            watches: a.watches,
            clients_per_supernode: a.clients_per_supernode.max(1),
            sn_max_clients: a.supernode_max_clients,
            // Records homed: three homes each, spread over the supernodes, with room.
            sn_max_records: 2_000_000,
            min_tenure: a.min_tenure.map_or(
                voxmesh::roles::Config::default().min_tenure,
                Duration::from_secs,
            ),
            warmup: Duration::from_secs(a.warmup),
            sample_every: Duration::from_secs(a.sample_every.max(1)),
            loss: a.loss,
        }
    }
}

/// Counters the engine keeps.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Counts {
    pub sessions: u64,
    pub joins: u64,
    pub leaves: u64,
    pub peak_online: usize,
    pub registrations: u64,
    pub failovers: u64,
    pub promotions: u64,
    pub demotions: u64,
    pub demoted_below_min: u64,
    pub sn_departures: u64,
    pub sn_over_limit: u64,
    pub relay_over_limit: u64,
    pub grant_requests: u64,
    pub grants: u64,
    pub relay_promotions: u64,
    pub presence_events: u64,
    pub lookups: u64,
    pub lookups_ok: u64,
    pub calls: u64,
    pub calls_ok: u64,
    pub direct: u64,
    pub relayed: u64,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Report {
    pub config: ConfigOut,
    pub totals: Totals,
    pub supernodes: Supernodes,
    pub relays: Relays,
    pub lookups: Ratio,
    pub presence: Presence,
    pub calls: Calls,
    pub tenure: Tenure,
    pub agent_errors: BTreeMap<String, u64>,
    pub network: Network,
    /// What the supernodes' real cores did (the simulator's cost is mostly this work).
    pub work: Work,
    /// Wall time and memory: the only part two runs with one seed may differ in.
    pub run: Run,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct ConfigOut {
    pub clients: usize,
    pub minutes: f64,
    pub seed: u64,
    pub session_median_min: f64,
    pub session_sigma: f64,
    pub calls_per_hour: f64,
    pub watches: usize,
    pub clients_per_supernode: usize,
    pub supernode_max_clients: usize,
    pub min_tenure_s: u64,
    pub nat_mix: BTreeMap<String, f64>,
    pub promotion: &'static str,
    pub cores: &'static str,
    pub abstracted: &'static str,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Totals {
    pub sessions: u64,
    pub users: usize,
    pub joins: u64,
    pub leaves: u64,
    pub peak_online: usize,
    pub final_online: usize,
    pub registrations: u64,
    pub failovers: u64,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Supernodes {
    pub fraction_min: f64,
    pub fraction_max: f64,
    pub in_band_0_1_to_1_pct: bool,
    /// Registered clients per supernode, over every supernode at every sample.
    pub load: Dist,
    pub load_limit: usize,
    pub samples_over_limit: u64,
    pub promotions: u64,
    pub demotions: u64,
    pub departures_with_user: u64,
    pub grant_requests: u64,
    pub grants: u64,
    pub relay_only_promotions: u64,
    pub samples: Vec<Sample>,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Relays {
    /// Relayed calls per relay, over every relay at every sample.
    pub load: Dist,
    pub samples_over_limit: u64,
    pub limit: &'static str,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Ratio {
    pub total: u64,
    pub ok: u64,
    pub success: f64,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Presence {
    pub events: u64,
    /// Seconds from a user's change (registered / closed) to a watcher on another supernode
    /// hearing of it.
    pub latency_s: Dist,
    pub what: &'static str,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Calls {
    /// Placed and finished (set up or failed); those still being set up at the end are in
    /// `in_flight_at_end`.
    pub placed: u64,
    pub in_flight_at_end: u64,
    pub ok: u64,
    pub success: f64,
    pub direct: u64,
    pub relayed: u64,
    pub relayed_share: f64,
    pub setup_s: Dist,
    pub failures: BTreeMap<String, u64>,
    /// The same failures by what the simulator knew of the callee and the two supernodes at
    /// the time (it sees the whole network; the cores do not).
    pub failure_causes: BTreeMap<String, u64>,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Tenure {
    pub min_tenure_s: u64,
    pub policy_demotions: u64,
    pub policy_demotions_below_min: u64,
    /// Tenures ended by the policy.
    pub ended_s: Dist,
    /// Tenures of those still serving at the end.
    pub serving_s: Dist,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Network {
    pub steps: u64,
    pub datagrams: u64,
    pub lost: u64,
    pub dropped_by_nat: u64,
    pub unroutable: u64,
}

#[derive(Serialize, PartialEq, Debug)]
pub struct Run {
    pub wall_s: f64,
    pub peak_rss_mb: f64,
}

/// Runs one simulation and reports it.
pub fn simulate(args: &SimArgs) -> Report {
    let t0 = std::time::Instant::now();
    let cfg = Config::from_args(args);
    let policy = StandIn {
        clients_per_supernode: cfg.clients_per_supernode,
        floor: 3,
        min_uptime: Duration::from_secs(120),
        min_up_kbps: 5_000,
        hysteresis: 0.5,
        min_tenure: cfg.min_tenure,
        period: Duration::from_secs(10),
    };
    let mut e = Engine::new(cfg.clone(), policy, args.promotion);
    e.run();
    let mut c = e.counts.clone();
    let (pending, pending_lookups) = e.calls_in_flight();
    c.calls -= pending;
    c.lookups -= pending_lookups;
    let fr: Vec<f64> = e.samples.iter().map(|s| s.fraction).collect();
    let fmin = fr.iter().copied().fold(f64::INFINITY, f64::min);
    let fmax = fr.iter().copied().fold(0.0, f64::max);
    let final_online = e.samples.last().map_or(0, |s| s.online);
    let wstats = e.world.stats;
    Report {
        config: ConfigOut {
            clients: cfg.clients,
            minutes: args.minutes,
            seed: cfg.seed,
            session_median_min: args.session_median,
            session_sigma: cfg.session_sigma,
            calls_per_hour: cfg.calls_per_hour,
            watches: cfg.watches,
            clients_per_supernode: cfg.clients_per_supernode,
            supernode_max_clients: cfg.sn_max_clients,
            min_tenure_s: cfg.min_tenure.as_secs(),
            nat_mix: NatKind::MIX
                .iter()
                .map(|(k, s)| {
                    (
                        serde_json::to_value(k)
                            .unwrap()
                            .as_str()
                            .unwrap()
                            .to_string(),
                        *s,
                    )
                })
                .collect(),
            promotion: match args.promotion {
                Promotion::Real => {
                    "real: voxmesh::roles::Promoter on every public client (dial-back result \
                     given: the simulator knows the NAT), need() and one GrantBook per \
                     supernode (grant round trip abstracted); the first \
                     ceil(clients/clients_per_supernode) supernodes are founders set at t=0"
                }
                Promotion::StandIn => {
                    "STAND-IN policy (public, uplink >= 5 Mbit/s, uptime >= 120 s; target \
                     online/clients_per_supernode, 50 % hysteresis, jittered ramp, minimum \
                     tenure), not the product's promoter"
                }
            },
            cores: "real: client Agent, Supernode, RelayLink (voxmesh); simulated: network, NATs",
            abstracted: "media (relay slots for the call's length), ICE (path from NAT types), \
                         TURN allocations (counted, reported through the real relay link)",
        },
        totals: Totals {
            sessions: c.sessions,
            users: e_users(&e),
            joins: c.joins,
            leaves: c.leaves,
            peak_online: c.peak_online,
            final_online,
            registrations: c.registrations,
            failovers: c.failovers,
        },
        supernodes: Supernodes {
            fraction_min: if fr.is_empty() { 0.0 } else { fmin },
            fraction_max: fmax,
            in_band_0_1_to_1_pct: !fr.is_empty() && fmin >= 0.001 && fmax <= 0.01,
            load: Dist::of(&e.sn_loads),
            load_limit: cfg.sn_max_clients,
            samples_over_limit: c.sn_over_limit,
            promotions: c.promotions,
            demotions: c.demotions,
            departures_with_user: c.sn_departures,
            grant_requests: c.grant_requests,
            grants: c.grants,
            relay_only_promotions: c.relay_promotions,
            samples: e.samples.clone(),
        },
        relays: Relays {
            load: Dist::of(&e.relay_loads),
            samples_over_limit: c.relay_over_limit,
            limit: "per relay: half its uplink / (2 x 48 kbit/s), at most 500 calls",
        },
        lookups: Ratio {
            total: c.lookups,
            ok: c.lookups_ok,
            success: ratio(c.lookups_ok, c.lookups),
        },
        presence: Presence {
            events: c.presence_events,
            latency_s: Dist::of(&e.presence),
            what: "registration or close of a watched user -> Presence event at a watcher \
                   registered through another supernode",
        },
        calls: Calls {
            placed: c.calls,
            in_flight_at_end: pending,
            ok: c.calls_ok,
            success: ratio(c.calls_ok, c.calls),
            direct: c.direct,
            relayed: c.relayed,
            relayed_share: ratio(c.relayed, c.calls_ok.max(1)),
            setup_s: Dist::of(&e.setup),
            failures: e.call_failures.clone(),
            failure_causes: e.failure_causes.clone(),
        },
        tenure: Tenure {
            min_tenure_s: cfg.min_tenure.as_secs(),
            policy_demotions: c.demotions,
            policy_demotions_below_min: c.demoted_below_min,
            ended_s: Dist::of(&e.tenures),
            serving_s: Dist::of(&e.serving_tenures()),
        },
        agent_errors: e.errors.clone(),
        network: Network {
            steps: e.steps,
            datagrams: wstats.sent,
            lost: wstats.lost,
            dropped_by_nat: wstats.dropped_by_nat,
            unroutable: wstats.unroutable,
        },
        work: e.work(),
        run: Run {
            wall_s: round(t0.elapsed().as_secs_f64()),
            peak_rss_mb: peak_rss_mb(),
        },
    }
}

fn e_users<P: promote::Policy>(e: &Engine<P>) -> usize {
    e.user_count()
}

/// Peak resident memory of this process (VmHWM), MiB; 0 where /proc does not say.
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| round(kb / 1024.0))
}

/// `voxlab sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let report = simulate(&args);
    if let Some(dir) = &args.plots {
        svg::write_all(dir, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let r = &report;
        println!(
            "{} clients, {} min: supernodes {:.3}–{:.3} % of online, lookups {:.4}, calls {:.4} \
             ({} direct, {} relayed), presence p99 {} s, {} s wall, {} MiB peak",
            r.config.clients,
            r.config.minutes,
            r.supernodes.fraction_min * 100.0,
            r.supernodes.fraction_max * 100.0,
            r.lookups.success,
            r.calls.success,
            r.calls.direct,
            r.calls.relayed,
            r.presence.latency_s.p99,
            r.run.wall_s,
            r.run.peak_rss_mb
        );
    }
    Ok(())
}
