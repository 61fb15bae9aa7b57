//! `voxlab sim` at a small size: a thousand clients on the real cores (agents, supernodes, relay
//! links) with churn, calls and the stand-in promotion policy; one seed replays the same report.

use voxlab::sim::pop::{Report, SimArgs, simulate};

fn small(seed: u64) -> SimArgs {
    let mut a = SimArgs::defaults();
    a.clients = 1000;
    a.minutes = 1.0;
    a.warmup = 20;
    a.sample_every = 10;
    a.seed = seed;
    // Calls often enough that a minute sees some.
    a.calls_per_hour = 30.0;
    a
}

/// Everything but the wall time and memory, which no seed fixes.
fn replayable(mut r: Report) -> Report {
    r.run.wall_s = 0.0;
    r.run.peak_rss_mb = 0.0;
    r
}

#[test]
fn one_seed_one_report_and_the_service_works() {
    let a = replayable(simulate(&small(7)));
    let b = replayable(simulate(&small(7)));
    assert_eq!(a, b, "two runs of one seed");
    assert!(
        a.totals.leaves > 0 && a.totals.joins > 1000,
        "churn: {:?}",
        a.totals
    );
    assert!(!a.supernodes.samples.is_empty());
    assert!(
        a.supernodes.in_band_0_1_to_1_pct,
        "{:?}",
        a.supernodes.samples
    );
    // Every online client registered by the last sample, but those that just arrived.
    let last = a.supernodes.samples.last().unwrap();
    assert!(last.registered * 100 >= last.online * 98, "{last:?}");
    assert!(a.calls.placed >= 50, "calls placed: {}", a.calls.placed);
    assert_eq!(a.lookups.ok, a.lookups.total, "{:?}", a.calls.failures);
    assert_eq!(a.calls.ok, a.calls.placed, "{:?}", a.calls.failures);
    assert!(a.calls.relayed > 0 && a.calls.direct > 0, "{:?}", a.calls);
    assert!(
        a.presence.latency_s.n > 0 && a.presence.latency_s.p99 <= 2.0,
        "{:?}",
        a.presence
    );
    // Not a constant report: the sample times follow the settings.
    assert_eq!(last.t_s, 60.0);
}
