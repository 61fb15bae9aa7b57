#!/usr/bin/env python3
"""Benchmark results as pictures and a table, from the JSON the bench scripts print.

  scripts/benchplot.py svg BENCH RESULT.json OUT.svg   one chart: voxmesh beside the reference
  scripts/benchplot.py report DIR                      DIR/README.md: a table of every DIR/*.json

BENCH names the script whose JSON it is (stun, relayd, natprobe, pipe-audio, analyze,
interop-burst, calls). Each panel of a chart is one headline figure with its own scale, our bar first,
the reference tool's after; the caption says which way is better and the ratio. Nothing is
drawn by hand: `scripts/bench-save` runs a bench, keeps its JSON in docs/bench/ and calls this.
Standard library only.
"""

import html
import json
import os
import sys

OURS = "#2563eb"
REFERENCE = "#9ca3af"


def figures(bench, d):
    """(title, [(panel title, unit, better, [(series, value)])], conditions line)."""
    if bench == "stun":
        f, s = d["fixed"], d["saturation"]
        return ("STUN Binding: supernoded vs coturn (one core each)", [
            ("CPU per request at a fixed rate", "µs", "lower",
             [("supernoded", f["supernoded"]["cpu_us_per_req"]), ("coturn", f["coturn"]["cpu_us_per_req"])]),
            ("answered per second at saturation", "req/s", "higher",
             [("supernoded", s["supernoded"]["answered_per_s"]), ("coturn", s["coturn"]["answered_per_s"])]),
        ], f"median of {d['conditions']['runs']} runs, {d['conditions']['fixed_rate']} req/s fixed")
    if bench == "relayd":
        v, m = d["voice_1000"], d["memory"]
        sat = d["saturation_1000"]
        return ("TURN relay: relayd vs coturn (one core each)", [
            ("relayed packets per CPU second, 1,000 allocations", "pkt/s", "higher",
             [("relayd", sat["relayd"]["relayed_per_cpu_s"]), ("coturn", sat["coturn"]["relayed_per_cpu_s"])]),
            ("voice load: server CPU, 1,000 calls", "s", "lower",
             [("relayd", v["relayd"]["cpu_s"]), ("coturn", v["coturn"]["cpu_s"])]),
            ("voice load: p99 latency end to end", "µs", "lower",
             [("relayd", v["relayd"]["latency_p99_us"]), ("coturn", v["coturn"]["latency_p99_us"])]),
            ("memory per allocation", "bytes", "lower",
             [("relayd", m["relayd"]["rss_per_allocation_bytes"]), ("coturn", m["coturn"]["rss_per_allocation_bytes"])]),
        ], f"median of {d['conditions']['runs']} runs in the lab")
    if bench == "natprobe":
        panels = []
        for server, r in d["servers"].items():
            panels.append((f"NAT diagnosis of every lab NAT type, against {server}", "s", "lower",
                           [("natprobe", r["natprobe_total_s"]), ("natdiscovery -m -f", r["natdiscovery_total_s"])]))
        return ("natprobe vs coturn's turnutils_natdiscovery", panels, f"median of {d['runs']} runs")
    if bench == "pipe-audio":
        e, dd = d["encode_x_realtime"], d["decode_x_realtime"]
        return ("Ogg Opus: pipe-audio convert vs a bare libopus loop and opus-tools", [
            ("encode speed", "× real time", "higher",
             [("pipe-audio", e["pipe-audio convert"]), ("bare libopus", e["bare libopus loop"]), ("opusenc", e["opusenc"])]),
            ("decode speed", "× real time", "higher",
             [("pipe-audio", dd["pipe-audio convert"]), ("bare libopus", dd["bare libopus loop"]), ("opusdec", dd["opusdec"])]),
        ], f"median of {d['runs']} runs, {d['audio_seconds']} s of audio")
    if bench == "analyze":
        b, w = d["after_blocked"], d["before_whole_fft"]
        return ("pipe-audio analyze: blocked correlation vs one whole FFT", [
            ("peak memory", "MB", "lower", [("blocked", b["peak_rss_mb"]), ("whole FFT", w["peak_rss_mb"])]),
            ("wall time", "s", "lower", [("blocked", b["wall_s"]), ("whole FFT", w["wall_s"])]),
        ], f"{d['audio_seconds']['reference']} s reference, median of {d['runs']} runs")
    if bench == "interop-burst":
        r, c = d["relayd"], d["coturn"]
        return ("turnutils_uclient burst from one address: relayd vs coturn", [
            ("wall time", "s", "lower", [("relayd", r["wall_s"]), ("coturn", c["wall_s"])]),
            ("server CPU", "s", "lower", [("relayd", r["server_cpu_s"]), ("coturn", c["server_cpu_s"])]),
        ], f"median of {d['conditions']['runs']} runs; {d['command']}")
    if bench == "calls":
        panels = []
        for pair, r in d["pairs"].items():
            for key, what in [("ringing_ms", "dial to ringing"),
                              ("ringing_first_run_ms", "dial to ringing, a caller's first run (no TCP hint yet)"),
                              ("ringing_by_name_ms", "ringing by name"),
                              ("ringing_through_answer_ms", "ringing through a running answer"),
                              ("first_media_ms", "accept to first media"), ("direct_path_ms", "accept to direct path")]:
                f = r.get(key)
                if f and f.get("n"):
                    panels.append((f"{pair} (RTT {r['rtt_ms']} ms): {what}, p95", "ms", "lower",
                                   [("measured p95", f["p95"]), ("target", f["target"])]))
        return ("Call set-up in the lab (25 ms each way per NAT link) against issue 11's targets", panels,
                f"p50/p95 over {d['calls_per_pair']} calls per pair")
    raise SystemExit(f"benchplot: unknown bench '{bench}'")


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def svg(bench, d):
    title, panels, note = figures(bench, d)
    width, label_w, bar_h, gap = 760, 170, 22, 6
    rows = []
    y = 56
    for ptitle, unit, better, series in panels:
        vals = [v for _, v in series if v is not None]
        top = max(vals) if vals else 1
        ours, ref = series[0][1], series[1][1]
        ratio = f"ratio {ours / ref:.2f}" if ours is not None and ref else "ratio n/a"
        rows.append(f'<text x="10" y="{y}" font-weight="bold">{html.escape(ptitle)} '
                    f'<tspan font-weight="normal" fill="#555">({html.escape(unit)}, {better} is better; '
                    f'{ratio})</tspan></text>')
        y += 10
        for i, (name, v) in enumerate(series):
            w = 0 if v is None or top <= 0 else (width - label_w - 90) * v / top
            colour = OURS if i == 0 else REFERENCE
            rows.append(f'<text x="{label_w - 8}" y="{y + bar_h - 6}" text-anchor="end">{html.escape(name)}</text>')
            rows.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            rows.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 6}">{fmt(v)}</text>')
            y += bar_h + gap
        y += 22
    height = y + 10
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="10" y="40" fill="#555">{html.escape(note)}</text>',
        *rows,
        "</svg>",
        "",
    ])


def report(directory):
    lines = ["# Benchmark results", "",
             "Written by `scripts/bench-save` from each bench's own JSON (kept here beside its chart);",
             "each row is a headline figure, ours first, then the reference tool in the same run.", "",
             "| bench | figure | ours | reference | ratio | better | target met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    charts = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        bench = name[:-5]
        d = json.load(open(os.path.join(directory, name)))
        try:
            title, panels, note = figures(bench, d)
        except SystemExit:
            continue  # kept with its own table in the top README (media, delay)
        met = d.get("target_met", d.get("all_targets_met"))
        for ptitle, unit, better, series in panels:
            (a, ours), (b, ref) = series[0], series[1]
            ratio = f"{ours / ref:.2f}" if ours is not None and ref else "n/a"
            if bench == "calls":  # each row is a figure against its own target
                met = ours is not None and ref is not None and ours <= ref
            lines.append(f"| {bench} | {ptitle} ({unit}) | {a}: {fmt(ours)} | {b}: {fmt(ref)} | {ratio} | "
                         f"{better} | {'yes' if met else 'no' if met is False else 'n/a'} |")
        charts.append(f"![{title}]({bench}.svg)")
    lines += ["", *charts, ""]
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv):
    if len(argv) == 5 and argv[1] == "svg":
        with open(argv[3]) as f:
            data = json.load(f)
        with open(argv[4], "w") as f:
            f.write(svg(argv[2], data))
    elif len(argv) == 3 and argv[1] == "report":
        report(argv[2])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
