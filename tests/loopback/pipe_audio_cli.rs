//! pipe-audio end to end, without external tools: pipes, formats, errors and exit codes, the
//! generator and analyzer, and the ALSA `null` device through cpal. WAV files are checked
//! with hound, an implementation independent of ours.

use crate::support::pipe_audio as pipe_audio_common;

use pipe_audio_common::*;

/// Pseudo-random samples covering the whole range, extremes included.
fn noise_i32(n: usize, bits: u32, seed: u64) -> Vec<i32> {
    let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let mut s = seed;
    let mut v: Vec<i32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (lo + ((s >> 16) as i64).rem_euclid(hi - lo + 1)) as i32
        })
        .collect();
    v[0] = lo as i32;
    v[1] = hi as i32;
    v
}

fn write_hound(path: &str, rate: u32, channels: u16, bits: u16, float: bool, n: usize) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    if float {
        for (i, v) in noise_i32(n * channels as usize, 24, 7)
            .into_iter()
            .enumerate()
        {
            let x = v as f32 / 8_388_608.0;
            w.write_sample(if i == 2 { 0.999_999_9 } else { x })
                .unwrap();
        }
    } else {
        for v in noise_i32(n * channels as usize, bits as u32, 11) {
            w.write_sample(v).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn hound_samples(path: &str) -> (hound::WavSpec, Vec<String>) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let s = match spec.sample_format {
        hound::SampleFormat::Float => r
            .samples::<f32>()
            .map(|x| x.unwrap().to_bits().to_string())
            .collect(),
        hound::SampleFormat::Int => r.samples::<i32>().map(|x| x.unwrap().to_string()).collect(),
    };
    (spec, s)
}

#[test]
fn wav_to_raw_to_wav_through_pipes_is_bit_exact() {
    let d = Scratch::new("rawpipe");
    let (a, b) = (d.path("a.wav"), d.path("b.wav"));
    write_hound(&a, 48_000, 1, 16, false, 48_013);
    // Raw on stdout is the call format; raw on stdin is read as the call format.
    pipeline_ok(&format!("$PA convert {a} - | $PA convert - {b}"));
    assert_eq!(hound_samples(&a), hound_samples(&b));
    // And the raw stream is exactly the WAV's data, little-endian s16.
    let raw = pipeline_ok(&format!("$PA convert {a} -")).stdout;
    let wav = std::fs::read(&a).unwrap();
    assert_eq!(raw, wav[44..]);
}

#[test]
fn a_streamed_wav_on_stdout_reads_back_exactly() {
    let d = Scratch::new("wavpipe");
    let (a, b) = (d.path("a.wav"), d.path("b.wav"));
    write_hound(&a, 44_100, 1, 24, false, 10_007);
    let streamed = pipeline_ok(&format!("$PA convert {a} - --format wav")).stdout;
    // The sizes say "unknown" (sox's marker), since stdout cannot seek back to patch them.
    assert_eq!(&streamed[..4], b"RIFF");
    let data_at = streamed.windows(4).position(|w| w == b"data").unwrap();
    assert_eq!(
        streamed[data_at + 4..data_at + 8],
        0x7fff_f000u32.to_le_bytes()
    );
    assert_eq!(
        streamed.len(),
        data_at + 8 + 10_007 * 3 + 1,
        "odd data gets a pad byte"
    );
    pipeline_ok(&format!("$PA convert {a} - -f wav | $PA convert - {b}"));
    assert_eq!(hound_samples(&a), hound_samples(&b));
}

#[test]
fn hound_and_we_read_each_other_in_every_wav_encoding() {
    let d = Scratch::new("hound");
    for (bits, float, ch) in [
        (16, false, 1),
        (24, false, 2),
        (32, true, 1),
        (8, false, 1),
        (16, false, 6),
    ] {
        let (a, b) = (d.path("a.wav"), d.path("b.wav"));
        write_hound(&a, 16_000, ch, bits, float, 3_001);
        pa_ok(&["convert", &a, &b]);
        let (sa, xa) = hound_samples(&a);
        let (sb, xb) = hound_samples(&b);
        assert_eq!((sb.channels, sb.sample_rate), (sa.channels, sa.sample_rate));
        if bits == 8 {
            // 8-bit input is written as 16-bit (8-bit WAV is unsigned and lossy): same values.
            assert_eq!(sb.bits_per_sample, 16);
            let wide: Vec<String> = xa
                .iter()
                .map(|v| (v.parse::<i32>().unwrap() << 8).to_string())
                .collect();
            assert_eq!(xb, wide);
        } else {
            assert_eq!(
                (sb.bits_per_sample, sb.sample_format),
                (bits, sa.sample_format)
            );
            assert_eq!(xa, xb, "{bits}-bit float={float} ch={ch}");
        }
    }
}

#[test]
fn ogg_opus_through_a_pipe_keeps_the_sample_count() {
    let d = Scratch::new("oggpipe");
    let (a, b) = (d.path("a.wav"), d.path("b.wav"));
    pa_ok(&[
        "gen",
        "sweep",
        "--to",
        "8000",
        "--duration",
        "1.2345",
        "-o",
        &a,
    ]);
    pipeline_ok(&format!(
        "$PA convert {a} - --format ogg --bitrate 32 | $PA convert - {b}"
    ));
    assert_eq!(wav_frames(&b), wav_frames(&a));
    let r = analyze(&b, Some(&a));
    assert!(
        r["reference"]["delay_samples"].as_i64().unwrap().abs() <= 1,
        "{r}"
    );
    assert!(r["reference"]["similarity"].as_f64().unwrap() > 0.9, "{r}");
}

#[test]
fn cd_audio_becomes_the_call_format_with_the_rounded_length() {
    let d = Scratch::new("cd");
    let a = d.path("a.wav");
    pa_ok(&[
        "gen",
        "tone",
        "--rate",
        "44100",
        "--channels",
        "2",
        "--duration",
        "0.5001",
        "-o",
        &a,
    ]);
    let n = wav_frames(&a) as u64;
    let raw = pipeline_ok(&format!("$PA convert {a} -")).stdout;
    assert_eq!(
        raw.len() as u64,
        2 * ((n * 48_000 * 2 + 44_100) / (2 * 44_100))
    );
}

#[test]
fn dtmf_is_generated_and_found_again_even_through_opus() {
    let d = Scratch::new("dtmf");
    let (a, o, b) = (d.path("a.wav"), d.path("a.opus"), d.path("b.wav"));
    pa_ok(&[
        "gen",
        "dtmf",
        "159#*0D",
        "--tone-ms",
        "60",
        "--gap-ms",
        "60",
        "-o",
        &a,
    ]);
    assert_eq!(analyze(&a, None)["dtmf"], "159#*0D");
    pa_ok(&[
        "convert",
        &a,
        &o,
        "--application",
        "voip",
        "--bitrate",
        "16",
    ]);
    pa_ok(&["convert", &o, &b]);
    assert_eq!(analyze(&b, None)["dtmf"], "159#*0D");
    let silence = d.path("s.wav");
    pa_ok(&["gen", "silence", "--duration", "0.5", "-o", &silence]);
    let r = analyze(&silence, None);
    assert_eq!(
        (r["dtmf"].as_str(), r["silence_ratio"].as_f64()),
        (Some(""), Some(1.0))
    );
    assert_eq!(r["samples"], 24_000);
}

#[test]
fn analyze_finds_the_delay_of_a_delayed_copy() {
    let d = Scratch::new("delay");
    let (sweep, gap, late) = (d.path("s.raw"), d.path("g.raw"), d.path("late.raw"));
    pa_ok(&[
        "gen",
        "sweep",
        "--from",
        "100",
        "--to",
        "8000",
        "--duration",
        "0.5",
        "-o",
        &sweep,
    ]);
    pa_ok(&["gen", "silence", "--duration", "0.0125", "-o", &gap]);
    pipeline_ok(&format!("cat {gap} {sweep} > {late}"));
    let r = analyze(&late, Some(&sweep));
    assert_eq!(r["reference"]["delay_samples"], 600, "{r}");
    assert!(r["reference"]["similarity"].as_f64().unwrap() > 0.999);
    let r = analyze(&sweep, Some(&late));
    assert_eq!(r["reference"]["delay_samples"], -600);
}

/// Recordings longer than the in-memory spool (4 Mi samples by default; a hidden flag lowers
/// it here) go through the temporary file and the blocked correlation; the answer must be the
/// one the old whole-signal search (`--whole-fft`) gives, and the inserted delay, both ways.
#[test]
fn analyze_of_long_recordings_spools_and_agrees_with_the_whole_signal_search() {
    let d = Scratch::new("longdelay");
    let (sweep, gap, late) = (d.path("s.raw"), d.path("g.raw"), d.path("late.raw"));
    let rate = ["--rate", "8000"];
    let make = |what: &[&str], out: &str| {
        let mut a = vec!["gen"];
        a.extend(what);
        a.extend(rate);
        a.extend(["-o", out]);
        pa_ok(&a);
    };
    make(
        &["sweep", "--from", "60", "--to", "3900", "--duration", "12"],
        &sweep,
    );
    make(&["silence", "--duration", "0.0503"], &gap);
    pipeline_ok(&format!("cat {gap} {sweep} > {late}"));
    let (sw, lw) = (d.path("s.wav"), d.path("late.wav"));
    for (raw, wav) in [(&sweep, &sw), (&late, &lw)] {
        pa_ok(&["convert", raw, wav, "--in-rate", "8000"]);
    }
    let tmp = d.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for (x, r, want) in [(&lw, &sw, 402), (&sw, &lw, -402)] {
        let run = |extra: &[&str]| {
            let out = std::process::Command::new(bin())
                .args(["analyze", x, "--reference", r, "--json"])
                .args(extra)
                .env("TMPDIR", &tmp)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["reference"].clone()
        };
        let blocked = run(&["--spill-after", "20000"]);
        assert_eq!(blocked["delay_samples"], want, "{blocked}");
        assert_eq!(blocked, run(&["--whole-fft"]));
        assert!(blocked["similarity"].as_f64().unwrap() > 0.999, "{blocked}");
    }
    // The spool file is unlinked as soon as it is made: nothing is left behind.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn bad_input_unsupported_formats_and_missing_things_have_their_exit_codes() {
    let d = Scratch::new("errors");
    let (a, o) = (d.path("a.wav"), d.path("a.opus"));
    pa_ok(&["gen", "tone", "--duration", "1", "-o", &a]);
    pa_ok(&["convert", &a, &o]);
    let wav = std::fs::read(&a).unwrap();
    let ogg = std::fs::read(&o).unwrap();
    let cut_wav = d.path("cut.wav");
    std::fs::write(&cut_wav, &wav[..wav.len() / 2]).unwrap();
    let cut_ogg = d.path("cut.opus");
    std::fs::write(&cut_ogg, &ogg[..ogg.len() - 100]).unwrap();
    let mut bad = ogg.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    let bad_ogg = d.path("bad.opus");
    std::fs::write(&bad_ogg, &bad).unwrap();
    let mut adpcm = wav.clone();
    adpcm[20] = 2;
    let adpcm_wav = d.path("adpcm.wav");
    std::fs::write(&adpcm_wav, &adpcm).unwrap();
    let out = d.path("out.wav");
    let missing = d.path("missing.wav");
    for (args, code, words) in [
        (vec!["convert", &cut_wav, &out], 5, "truncated"),
        (vec!["convert", &cut_ogg, &out], 5, "truncated"),
        (vec!["convert", &bad_ogg, &out], 5, "checksum"),
        (vec!["convert", &adpcm_wav, &out], 4, "unsupported"),
        (vec!["convert", &a, "x.mp3"], 4, "cannot tell the format"),
        (vec!["convert", &a, &o, "--channels", "6"], 4, "channels"),
        (vec!["convert", &missing, &out], 6, "missing.wav"),
        (
            vec!["play", "-d", "no-such-device", &a],
            3,
            "no playback device",
        ),
        (vec!["convert", &a], 2, "OUT"),
    ] {
        let r = pa(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.to_lowercase().contains(&words.to_lowercase()),
            "{args:?}: {err}"
        );
        if code != 2 {
            assert_eq!(err.matches("pipe-audio:").count(), 1, "printed once: {err}");
        }
    }
    // Nothing half-written: no output, no temporary file.
    let left: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out") || n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    let o =
        pipeline_ok("$PA gen tone --duration 600 | head -c 1000 >/dev/null; echo ${PIPESTATUS[0]}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
}

#[test]
fn help_documents_the_exit_codes() {
    let o = pa_ok(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for line in [
        "3  audio device",
        "4  unsupported",
        "5  input truncated or corrupt",
        "6  a file",
    ] {
        assert!(help.contains(line), "missing '{line}'");
    }
}

#[test]
fn null_device_capture_gives_exactly_the_samples_asked_for() {
    let d = Scratch::new("capture");
    let w = d.path("c.wav");
    let o = pa_ok(&[
        "capture",
        "-d",
        "null",
        "--duration",
        "0.3",
        "-o",
        &w,
        "--stats",
        "-q",
    ]);
    assert_eq!(wav_frames(&w), 14_400);
    let stats: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(stats["frames"], 14_400);
    assert_eq!(
        stats["paced"], true,
        "the null device must be paced: {stats}"
    );
    // Raw to a pipe, at another rate.
    let raw = pipeline_ok("$PA capture -d null --duration 0.25 --rate 16000 | cat").stdout;
    assert_eq!(raw.len(), 4_000 * 2);
}

#[test]
fn null_device_playback_plays_every_frame() {
    let d = Scratch::new("play");
    let a = d.path("a.wav");
    pa_ok(&[
        "gen",
        "tone",
        "--rate",
        "44100",
        "--duration",
        "0.25",
        "-o",
        &a,
    ]);
    let o = pa_ok(&["play", "-d", "null", &a, "--stats", "-q"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(stats["frames"], 11_025, "{stats}");
    assert_eq!(stats["underruns"], 0);
    assert_eq!(stats["paced"], true);
    // From a pipe, raw call format.
    let o = pipeline_ok("$PA gen tone --duration 0.2 | $PA play -d null --stats -q 2>&1");
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["frames"], 9_600);
}

#[test]
fn realtime_output_paces_blocks_and_keeps_every_sample() {
    let d = Scratch::new("realtime");
    let (a, st) = (d.path("a.raw"), d.path("stats.json"));
    pa_ok(&["gen", "tone", "--duration", "0.3", "-o", &a]);
    let o = pipeline_ok(&format!(
        "$PA convert {a} - --realtime --stats -q 2>{st} | wc -c"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "28800");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&st).unwrap()).unwrap();
    assert_eq!(stats["lateness"]["blocks"], 15, "20 ms blocks: {stats}");
}

#[test]
fn sigterm_ends_a_capture_with_a_complete_stream() {
    use std::io::Read;
    let mut child = std::process::Command::new(bin())
        .args(["capture", "-d", "null", "--format", "wav", "-q"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    // Once audio is flowing (header plus some data), ask it to stop.
    let mut got = vec![0u8; 44 + 4800];
    out.read_exact(&mut got).unwrap();
    terminate(child.id());
    out.read_to_end(&mut got).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(&got[..4], b"RIFF");
    assert_eq!((got.len() - 44) % 2, 0, "whole samples only");
    // Nothing more need arrive after the signal: the capture may stop on the very block it
    // had written (this once asserted `>` and failed when the suite kept the cores busy).
    assert!(got.len() >= 44 + 4800);
}

/// SIGTERM to `pid`, through the kill(1) command (the tests stay free of unsafe code).
fn terminate(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
