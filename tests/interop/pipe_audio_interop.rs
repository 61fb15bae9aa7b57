//! pipe-audio against the reference tools: opusenc/opusdec (Ogg Opus both ways, sample counts,
//! delay, PESQ-WB quality), sox (reading our streamed WAV; resampling quality against
//! `sox rate -v`). Each test skips with a message when its tool is missing, and fails instead
//! under CI=true.

use crate::support::pipe_audio as pipe_audio_common;

use pipe_audio_common::*;

fn opus_tools(test: &str) -> bool {
    have("opusenc", &["--version"], test) && have("opusdec", &["--version"], test)
}

#[test]
fn opusdec_decodes_our_files_to_the_exact_sample_count() {
    if !opus_tools("opusdec_decodes_our_files") {
        return;
    }
    let d = Scratch::new("ours-opusdec");
    for (rate, ch, n) in [
        (48_000, 1, 1),
        (48_000, 1, 959),
        (48_000, 1, 48_000),
        (48_000, 2, 100_017),
        (44_100, 2, 44_100),
        (16_000, 1, 16_003),
    ] {
        let (a, o, b) = (d.path("a.wav"), d.path("a.opus"), d.path("b.wav"));
        let secs = format!("{}", n as f64 / rate as f64);
        pa_ok(&[
            "gen",
            "sweep",
            "--to",
            "7000",
            "--rate",
            &rate.to_string(),
            "--channels",
            &ch.to_string(),
            "--duration",
            &secs,
            "-o",
            &a,
        ]);
        assert_eq!(wav_frames(&a), n);
        pa_ok(&["convert", &a, &o]);
        sh_ok("opusdec", &["--quiet", &o, &b]);
        assert_eq!(wav_frames(&b), n, "{rate} Hz x{ch}, {n} samples");
    }
}

#[test]
fn opusenc_files_convert_back_to_the_exact_sample_count() {
    if !opus_tools("opusenc_files_convert_back") {
        return;
    }
    let d = Scratch::new("opusenc-ours");
    for (rate, ch, n) in [
        (48_000, 1, 96_123),
        (48_000, 2, 1_000),
        (44_100, 2, 44_100),
        (44_100, 1, 22_051),
        (16_000, 1, 16_000),
    ] {
        let (a, o, b) = (d.path("a.wav"), d.path("a.opus"), d.path("b.wav"));
        let secs = format!("{}", n as f64 / rate as f64);
        pa_ok(&[
            "gen",
            "tone",
            "--freq",
            "440",
            "--rate",
            &rate.to_string(),
            "--channels",
            &ch.to_string(),
            "--duration",
            &secs,
            "-o",
            &a,
        ]);
        sh_ok("opusenc", &["--quiet", &a, &o]);
        pa_ok(&["convert", &o, &b]);
        assert_eq!(wav_frames(&b), n, "{rate} Hz x{ch}, {n} samples");
        // And at the call format: the 48 kHz count in the file (opusenc rounds it up).
        let raw = pipeline_ok(&format!("$PA convert {o} -")).stdout;
        let want = (n as u64 * 48_000).div_ceil(rate);
        assert_eq!(raw.len() as u64, 2 * want, "{rate} Hz x{ch} as call format");
    }
}

#[test]
fn round_trips_are_aligned_within_one_sample() {
    if !opus_tools("round_trips_are_aligned") {
        return;
    }
    let d = Scratch::new("delay-interop");
    let a = d.path("a.wav");
    pa_ok(&[
        "gen",
        "sweep",
        "--from",
        "50",
        "--to",
        "8000",
        "--duration",
        "2",
        "-o",
        &a,
    ]);
    let (ours, theirs) = (d.path("ours.opus"), d.path("theirs.opus"));
    pa_ok(&["convert", &a, &ours]);
    sh_ok("opusenc", &["--quiet", &a, &theirs]);
    let (oo, od, to) = (d.path("oo.wav"), d.path("od.wav"), d.path("to.wav"));
    pa_ok(&["convert", &ours, &oo]);
    sh_ok("opusdec", &["--quiet", &ours, &od]);
    pa_ok(&["convert", &theirs, &to]);
    for (name, f) in [
        ("ours->ours", &oo),
        ("ours->opusdec", &od),
        ("opusenc->ours", &to),
    ] {
        let r = analyze(f, Some(&a));
        let delay = r["reference"]["delay_samples"].as_i64().unwrap();
        let sim = r["reference"]["similarity"].as_f64().unwrap();
        eprintln!("{name}: delay {delay} samples, similarity {sim:.4}");
        assert!(delay.abs() <= 1, "{name}: {r}");
        assert!(sim > 0.95, "{name}: {r}");
    }
}

#[test]
fn pesq_wb_of_our_encode_and_decode_is_no_worse_than_opus_tools() {
    let test = "pesq_wb";
    if !opus_tools(test)
        || !have("espeak-ng", &["--version"], test)
        || !have("sox", &["--version"], test)
    {
        return;
    }
    let py = std::process::Command::new("python3")
        .args(["-c", "import pesq, soundfile, numpy"])
        .output();
    if !py.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: python3 pesq/soundfile/numpy missing"
        );
        eprintln!(
            "{test}: skipped, python3 with pesq, soundfile and numpy is missing (run scripts/setup)"
        );
        return;
    }
    let d = Scratch::new("pesq");
    let speech = d.path("speech.wav");
    sh_ok(
        "espeak-ng",
        &[
            "-w",
            &speech,
            concat!(
                "The birch canoe slid on the smooth planks. ",
                "Glue the sheet to the dark blue background. ",
                "It is easy to tell the depth of a well."
            ),
        ],
    );
    let reference = d.path("ref48.wav");
    sh_ok("sox", &[&speech, "-r", "48000", &reference]);
    let versions =
        String::from_utf8_lossy(&pa_ok(&["bench-codec", &reference]).stdout).into_owned();
    let theirs_version = String::from_utf8_lossy(&sh_ok("opusenc", &["--version"]).stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let mut lines = Vec::new();
    for kbps in ["16", "24"] {
        let (o, od) = (d.path("o.opus"), d.path("o.wav"));
        pa_ok(&[
            "convert",
            &reference,
            &o,
            "--bitrate",
            kbps,
            "--application",
            "audio",
        ]);
        pa_ok(&["convert", &o, &od]);
        let (t, td) = (d.path("t.opus"), d.path("t.wav"));
        sh_ok("opusenc", &["--quiet", "--bitrate", kbps, &reference, &t]);
        sh_ok("opusdec", &["--quiet", &t, &td]);
        let script = concat!(
            "import sys, soundfile as sf\n",
            "from pesq import pesq\n",
            "r, _ = sf.read(sys.argv[1])\n",
            "for f in sys.argv[2:]:\n",
            "    d, _ = sf.read(f)\n",
            "    n = min(len(r), len(d))\n",
            "    print(pesq(16000, r[:n], d[:n], 'wb'))\n",
        );
        // PESQ-WB wants 16 kHz; all three go through the same sox resampler.
        let mut to16 = Vec::new();
        for f in [&reference, &od, &td] {
            let g = format!("{f}.16k.wav");
            sh_ok("sox", &[f, "-r", "16000", &g]);
            to16.push(g);
        }
        let out = sh_ok("python3", &["-c", script, &to16[0], &to16[1], &to16[2]]);
        let scores: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        let line = format!(
            "{kbps} kb/s audio: PESQ-WB ours {:.3}, opusenc/opusdec {:.3}",
            scores[0], scores[1]
        );
        eprintln!("{line}");
        assert!(scores[0] >= scores[1] - 0.1, "{line}");
        lines.push(line);
    }
    eprintln!("ours: {}theirs: {theirs_version}", versions.trim_end());
}

#[test]
fn sox_reads_our_streamed_wav_with_the_exact_sample_count() {
    if !have("sox", &["--version"], "sox_reads_streamed_wav") {
        return;
    }
    let d = Scratch::new("sox-stream");
    let (a, r) = (d.path("a.wav"), d.path("out.raw"));
    pa_ok(&[
        "gen",
        "tone",
        "--duration",
        "1.00001",
        "--rate",
        "44100",
        "--channels",
        "2",
        "-s",
        "s24",
        "-o",
        &a,
    ]);
    let n = wav_frames(&a) as usize;
    let o = pipeline_ok(&format!(
        "$PA convert {a} - --format wav | sox -t wav - -t raw -e signed -b 24 {r}"
    ));
    assert_eq!(std::fs::metadata(&r).unwrap().len() as usize, n * 2 * 3);
    let warn = String::from_utf8_lossy(&o.stderr);
    assert!(!warn.contains("WARN"), "sox complained: {warn}");
    // The same bytes as our own data.
    let ours = std::fs::read(&a).unwrap();
    assert_eq!(std::fs::read(&r).unwrap(), ours[ours.len() - n * 6..]);
}

/// SNR in dB of `x` against `ideal`, leaving out 5% at each edge (where a sweep starts and
/// stops abruptly and every resampler rings).
fn snr(x: &[f64], ideal: &[f64]) -> f64 {
    let n = x.len().min(ideal.len());
    let e = n / 20;
    let (mut s, mut d) = (0.0, 0.0);
    for i in e..n - e {
        s += ideal[i] * ideal[i];
        d += (x[i] - ideal[i]).powi(2);
    }
    10.0 * (s / d).log10()
}

#[test]
fn resampling_is_as_good_as_sox_rate_v() {
    if !have("sox", &["--version"], "resampling_vs_sox") {
        return;
    }
    let d = Scratch::new("resample-sox");
    let ideal = d.path("ideal.wav");
    // The same sweep (20 Hz to 20 kHz) sampled at 48 kHz directly: what a perfect resampler gives.
    pa_ok(&[
        "gen",
        "sweep",
        "--to",
        "20000",
        "--duration",
        "2",
        "--amplitude",
        "0.5",
        "-s",
        "f32",
        "-o",
        &ideal,
    ]);
    let (_, ideal) = wav_mono(&ideal);
    for sample in ["s16", "f32"] {
        let input = d.path(&format!("in-{sample}.wav"));
        pa_ok(&[
            "gen",
            "sweep",
            "--to",
            "20000",
            "--duration",
            "2",
            "--amplitude",
            "0.5",
            "--rate",
            "44100",
            "--channels",
            "2",
            "-s",
            sample,
            "-o",
            &input,
        ]);
        let (ours, theirs) = (d.path("ours.wav"), d.path("sox.wav"));
        pa_ok(&[
            "convert",
            &input,
            &ours,
            "--rate",
            "48000",
            "--channels",
            "1",
        ]);
        let enc = if sample == "f32" {
            ["-e", "floating-point", "-b", "32"]
        } else {
            ["-e", "signed", "-b", "16"]
        };
        // -D: no dither, so both write plain rounded samples.
        sh_ok(
            "sox",
            &[
                "-D", &input, "-r", "48000", "-c", "1", enc[0], enc[1], enc[2], enc[3], &theirs,
                "rate", "-v",
            ],
        );
        let (r1, x1) = wav_mono(&ours);
        let (r2, x2) = wav_mono(&theirs);
        assert_eq!(
            (r1, r2, x1.len(), x2.len()),
            (48_000, 48_000, 96_000, 96_000)
        );
        let (a, b) = (snr(&x1, &ideal), snr(&x2, &ideal));
        eprintln!(
            "44.1 kHz stereo {sample} -> 48 kHz mono: sweep SNR ours {a:.1} dB, sox rate -v {b:.1} dB"
        );
        assert!(a >= b - 3.0, "{sample}: ours {a:.1} dB vs sox {b:.1} dB");
        // A plain linear interpolator scores far lower: the measurement tells them apart.
        let (_, src) = wav_mono(&input);
        let linear: Vec<f64> = (0..96_000)
            .map(|k| {
                let t = k as f64 * 44_100.0 / 48_000.0;
                let (i, f) = (t as usize, t.fract());
                src[i] * (1.0 - f) + src.get(i + 1).copied().unwrap_or(0.0) * f
            })
            .collect();
        let l = snr(&linear, &ideal);
        assert!(
            l < a - 20.0,
            "linear interpolation {l:.1} dB vs ours {a:.1} dB"
        );
    }
}
