//! Plots of a report as small self-contained SVG files (line charts drawn by hand: no font or
//! rendering library needed, so the lab crate builds anywhere).

use std::fmt::Write as _;
use std::path::Path;

use super::Report;
use super::engine::Sample;

const W: f64 = 640.0;
const H: f64 = 320.0;
const PAD: f64 = 50.0;

/// One line: its label, colour and points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One line chart: `series` of (label, colour, points) over a shared x axis.
fn chart(title: &str, xlabel: &str, ylabel: &str, series: &[Series<'_>]) -> String {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() || x1 <= x0 {
        (x0, x1) = (0.0, 1.0);
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.1;
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y / y1 * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{title}</text>
<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>
<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{ylabel}</text>
"#,
        W / 2.0,
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD,
        W / 2.0,
        H - 10.0,
        H / 2.0,
        H / 2.0
    );
    for i in 0..=4 {
        let (xv, yv) = (x0 + (x1 - x0) * f64::from(i) / 4.0, y1 * f64::from(i) / 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            sx(xv),
            H - PAD + 15.0,
            fmt(xv),
            PAD - 4.0,
            sy(yv) + 4.0,
            fmt(yv)
        );
    }
    for (k, (label, colour, p)) in series.iter().enumerate() {
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{:.1}" y="{:.1}" fill="{colour}">{label}</text>"#,
            path.join(" "),
            W - PAD - 150.0,
            PAD + 14.0 * k as f64
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// One line of a plot over the run: its label, colour and value at a sample.
type Line<'a> = (&'a str, &'a str, &'a dyn Fn(&Sample) -> f64);

/// Writes `dir/file`: a chart of `lines` over the samples, x in simulated minutes.
fn plot(
    dir: &Path,
    file: &str,
    samples: &[Sample],
    title: &str,
    ylabel: &str,
    lines: &[Line<'_>],
) -> std::io::Result<()> {
    let series: Vec<Series<'_>> = lines
        .iter()
        .map(|&(label, colour, value)| {
            let points = samples.iter().map(|x| (x.t_s / 60.0, value(x))).collect();
            (label, colour, points)
        })
        .collect();
    let svg = chart(title, "simulated minutes", ylabel, &series);
    std::fs::write(dir.join(file), svg)
}

/// Writes the report's plots into `dir`.
pub fn write_all(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let s = &r.supernodes.samples;
    let n = r.config.clients;
    plot(
        dir,
        "supernode_fraction.svg",
        s,
        &format!("Supernodes, % of online clients ({n} clients)"),
        "%",
        &[
            ("supernodes", "#1f77b4", &|x| x.fraction * 100.0),
            ("0.1 %", "#999", &|_| 0.1),
            ("1 %", "#d62728", &|_| 1.0),
        ],
    )?;
    plot(
        dir,
        "online.svg",
        s,
        "Online and registered clients",
        "clients",
        &[
            ("online", "#1f77b4", &|x| x.online as f64),
            ("registered", "#2ca02c", &|x| x.registered as f64),
        ],
    )?;
    let limit = r.supernodes.load_limit as f64;
    plot(
        dir,
        "load.svg",
        s,
        "Busiest supernode (clients) and relay (calls)",
        "load",
        &[
            ("supernode max", "#1f77b4", &|x| x.sn_load_max as f64),
            ("supernode limit", "#d62728", &|_| limit),
            ("relay max", "#2ca02c", &|x| f64::from(x.relay_load_max)),
        ],
    )?;
    Ok(())
}
