//! Prometheus exposition through `prometheus-client`: the daemons copy their counters (plain
//! numbers in sans-IO cores, or atomics) into a [`Snapshot`] at scrape or tick time, and the
//! crate's text encoder (format 0.0.4) writes HELP and TYPE lines, label escaping and histogram
//! buckets.

use std::fmt::Display;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Debug)]
enum Values {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    /// Without the `_total` the encoder adds to counters.
    name: String,
    help: String,
    values: Values,
}

/// Metric families, in the order added.
#[derive(Debug, Default)]
pub struct Snapshot {
    families: Vec<Family>,
}

fn rows<K: Display, V>(
    label: Option<&str>,
    rows: impl IntoIterator<Item = (K, V)>,
) -> Vec<(Labels, V)> {
    rows.into_iter()
        .map(|(k, v)| {
            let labels = match label {
                Some(l) => vec![(l.to_string(), k.to_string())],
                None => Vec::new(),
            };
            (labels, v)
        })
        .collect()
}

impl Snapshot {
    /// A counter family, named with or without its `_total`: one unlabelled sample when `label`
    /// is `None`, else one sample per row labelled `label="key"`.
    pub fn counter<K: Display>(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        values: impl IntoIterator<Item = (K, u64)>,
    ) {
        self.families.push(Family {
            name: name.strip_suffix("_total").unwrap_or(name).to_string(),
            help: help.to_string(),
            values: Values::Counter(rows(label, values)),
        });
    }

    /// A gauge family (see [`Snapshot::counter`] for the rows).
    pub fn gauge<K: Display>(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        values: impl IntoIterator<Item = (K, i64)>,
    ) {
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            values: Values::Gauge(rows(label, values)),
        });
    }

    /// One unlabelled counter.
    pub fn count(&mut self, name: &str, help: &str, value: u64) {
        self.counter(name, help, None, [("", value)]);
    }

    /// One unlabelled gauge.
    pub fn level(&mut self, name: &str, help: &str, value: i64) {
        self.gauge(name, help, None, [("", value)]);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            values: Values::Histogram(h.clone()),
        });
    }

    /// `voxmesh_build_info{program,version} 1`, the usual way to expose what runs.
    pub fn build_info(&mut self, program: &str) {
        self.families.push(Family {
            name: "voxmesh_build_info".into(),
            help: "The running program and its version (always 1).".into(),
            values: Values::Gauge(vec![(
                vec![
                    ("program".into(), program.into()),
                    ("version".into(), env!("CARGO_PKG_VERSION").into()),
                ],
                1,
            )]),
        });
    }

    /// Appends `other`'s families.
    pub fn extend(&mut self, other: Snapshot) {
        self.families.extend(other.families);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.values {
                Values::Counter(_) => MetricType::Counter,
                Values::Gauge(_) => MetricType::Gauge,
                Values::Histogram(_) => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            match &f.values {
                Values::Counter(rows) => {
                    for (labels, v) in rows {
                        if labels.is_empty() {
                            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        } else {
                            m.encode_family(labels)?
                                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                        }
                    }
                }
                Values::Gauge(rows) => {
                    for (labels, v) in rows {
                        if labels.is_empty() {
                            m.encode_gauge(v)?;
                        } else {
                            m.encode_family(labels)?.encode_gauge(v)?;
                        }
                    }
                }
                Values::Histogram(h) => {
                    let buckets: Vec<(f64, u64)> = h
                        .bounds
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(h.counts.iter().copied())
                        .collect();
                    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                }
            }
        }
        Ok(())
    }
}

/// A latency histogram in seconds with fixed buckets from 10 µs to 1 s: a driver observes how
/// long its core took over one input, single-threaded, so plain numbers suffice.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Upper bounds in seconds: a core handles one datagram in microseconds; milliseconds mean a
/// stall (a full queue, a slow disk for the host cache, the other core busy).
const LATENCY_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            bounds: LATENCY_BOUNDS,
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}
