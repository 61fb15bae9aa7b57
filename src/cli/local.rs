//! The resident `answer`'s local control socket: a `dial` of the same identity places its call
//! through the running `answer` instead of registering a second time (which would replace the
//! answer's registration and cost the dial a handshake and a registration).
//!
//! The socket is a Unix stream socket next to the identity key file (`KEYFILE.sock`): `dial`
//! finds it from `--identity` alone, and it sits in the identity's own directory. It is made
//! owner-only (0600) before it gets its final name (bound under a temporary name, chmod, then
//! renamed over any stale one: the answer holds the identity lock, so an existing socket file
//! is a leftover), and the answer also checks each peer's uid (`SO_PEERCRED`).
//!
//! Protocol, JSON lines both ways:
//! - dial → answer, first line: `{"cmd":"dial","user":"vx1..."}` or `{"cmd":"dial","name":"bob"}`,
//!   optional `"play"` and `"record"` (absolute paths the answer opens; no pipes) and
//!   `"hangup_at_end"` (hang up when the played file ends).
//! - answer → dial: the call's events, as `dial` prints them (`dialing`, `ringing`, `answered`,
//!   `connected`, `path`, `dtmf`, `stats`, `ended`); a failure before the call exists is an
//!   `error` event with an `exit` code. The answer closes the connection after `ended`.
//! - dial → answer, later lines: control commands as on `--control` (`hangup`, `dtmf`, `mute`,
//!   `unmute`, `hold`, `resume`, `stats`). Closing the connection hangs the call up.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::call_io::Control;

/// The control socket of the identity in `identity` (the key file's path plus `.sock`).
pub fn socket_path(identity: &Path) -> PathBuf {
    let mut name = identity.file_name().unwrap_or_default().to_os_string();
    name.push(".sock");
    identity.with_file_name(name)
}

/// The first line a `dial` sends.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DialRequest {
    pub cmd: String,
    /// The callee's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The callee's name (looked up by the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub play: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
    #[serde(default)]
    pub hangup_at_end: bool,
}

/// A connection's news for the answer's loop.
pub enum Local {
    /// A new call asked for on connection `conn`; its events go to `events`.
    Dial {
        conn: u64,
        req: DialRequest,
        events: mpsc::UnboundedSender<Value>,
    },
    /// A control line on `conn`.
    Control { conn: u64, control: Control },
    /// `conn` closed: hang its call up.
    Closed { conn: u64 },
}

/// The listening socket; removes its file when dropped.
pub struct Listening {
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (owner-only); every connection's news arrives on the returned channel.
pub fn listen(path: &Path) -> anyhow::Result<(Listening, mpsc::Receiver<Local>)> {
    let tmp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("cannot listen on the control socket {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot put the control socket at {}", path.display()))?;
    // Our uid: the owner of the socket file we just made.
    let me = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .uid()
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut next = 0u64;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Only our own user may place calls as us (the 0600 mode says so too).
            if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
                continue;
            }
            next += 1;
            tokio::spawn(serve(next, stream, tx.clone()));
        }
    });
    Ok((
        Listening {
            path: path.to_path_buf(),
        },
        rx,
    ))
}

/// One connection: the request, then events out and control lines in until either side ends.
async fn serve(conn: u64, stream: UnixStream, to_loop: mpsc::Sender<Local>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    let first = match lines.next_line().await {
        Ok(Some(l)) => l,
        _ => return,
    };
    let req = match serde_json::from_str::<DialRequest>(&first) {
        Ok(r) if r.cmd == "dial" && (r.user.is_some() || r.name.is_some()) => r,
        Ok(_) => {
            let e = "the first line must be {\"cmd\":\"dial\",\"user\":ID} (or \"name\")";
            let _ = wr.write_all(bad(e.into()).as_bytes()).await;
            return;
        }
        Err(e) => {
            let _ = wr
                .write_all(bad(format!("bad request '{first}': {e}")).as_bytes())
                .await;
            return;
        }
    };
    let (etx, mut erx) = mpsc::unbounded_channel::<Value>();
    if to_loop
        .send(Local::Dial {
            conn,
            req,
            events: etx,
        })
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = erx.recv() => match ev {
                Some(v) => {
                    if wr.write_all(format!("{v}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
                // The call is over: the answer dropped its sender.
                None => return,
            },
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => match serde_json::from_str::<Control>(&l) {
                    Ok(control) => {
                        let _ = to_loop.send(Local::Control { conn, control }).await;
                    }
                    Err(e) => {
                        let msg = serde_json::json!({"event": "error", "message": format!("bad control line '{l}': {e}")});
                        let _ = wr.write_all(format!("{msg}\n").as_bytes()).await;
                    }
                },
                _ => break,
            },
        }
    }
    let _ = to_loop.send(Local::Closed { conn }).await;
}

fn bad(message: String) -> String {
    format!(
        "{}\n",
        serde_json::json!({"event": "error", "message": message, "exit": super::EXIT_USAGE})
    )
}
