//! The programs' JSON-lines event streams, read from a child process: one reader thread per
//! child feeding a channel, and a bounded wait for a named event.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Lines of a child's stdout as JSON values, on a channel (lines that are not JSON are
/// dropped). The channel closes when the child's stdout does.
///
/// # Panics
/// If the child's stdout was not piped or was already taken.
pub fn json_lines(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let out = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str(&l) else {
                continue;
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most `limit`) for an event named `name` on `rx`; every event seen, that one
/// included, is appended to `seen`.
pub fn wait_event(
    rx: &mpsc::Receiver<serde_json::Value>,
    name: &str,
    limit: Duration,
    seen: &mut Vec<serde_json::Value>,
) -> Option<serde_json::Value> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(v) = rx.recv_timeout(left) else {
            return None;
        };
        seen.push(v.clone());
        if v["event"] == name {
            return Some(v);
        }
    }
    None
}
