//! What `answer` and `dial` share: identity, supernodes (bootstrap entries plus the host cache),
//! contacts, and starting the directory agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use tokio::sync::mpsc;

use super::usage;
use crate::client::{Agent, AgentConfig, AgentEvent};
use crate::identity::{
    BootstrapEntry, Contacts, Identity, IdentityLock, NodeKey, Target as ContactTarget,
    default_key_path,
};
use crate::net::drivers::client::{AgentCommand, read_host_cache, resolve_bootstrap, run_agent};
use crate::net::{Shutdown, ShutdownSignal};
use crate::signal::Target;

/// Flags for reaching the directory.
#[derive(clap::Args, Debug, Clone)]
pub struct DirectoryArgs {
    /// A supernode as KEY@HOST:PORT (what `supernoded` prints); repeat for several.
    #[arg(short = 's', long = "supernode", value_name = "KEY@HOST:PORT")]
    pub supernodes: Vec<BootstrapEntry>,

    /// Identity key file (created on first use, mode 0600); default under $XDG_CONFIG_HOME/voxmesh.
    #[arg(long, value_name = "PATH")]
    pub identity: Option<PathBuf>,

    /// Host cache file (supernodes learnt from the mesh); default next to the identity.
    #[arg(long = "host-cache", value_name = "PATH")]
    pub host_cache: Option<PathBuf>,

    /// Contacts file (aliases for IDs); default next to the identity.
    #[arg(long, value_name = "PATH")]
    pub contacts: Option<PathBuf>,

    /// Local UDP address to use.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
}

impl DirectoryArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        let key = self.identity_path()?;
        Ok(key.parent().map(PathBuf::from).unwrap_or_default())
    }

    pub fn identity_path(&self) -> anyhow::Result<PathBuf> {
        match &self.identity {
            Some(p) => Ok(p.clone()),
            None => default_key_path()
                .context("cannot find a place for the identity key (set $HOME or use --identity)"),
        }
    }

    pub fn host_cache_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.host_cache.clone().unwrap_or(self.dir()?.join("hosts")))
    }

    /// Supernodes an earlier run reached only over TCP (`tcp-hints` next to the identity).
    pub fn tcp_hints_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.dir()?.join("tcp-hints"))
    }

    /// Loads (or creates) the identity and locks it for as long as the lock lives: for a
    /// program that runs as the identity (`answer`). A second one on the same key file fails
    /// with [`crate::identity::KeyFileError::InUse`].
    pub fn load_identity_locked(&self) -> anyhow::Result<(Identity, IdentityLock)> {
        let path = self.identity_path()?;
        // Every key file error names the file already: no context needed.
        let (id, created, lock) = Identity::load_or_create_locked(&path)?;
        if created {
            tracing::info!("created identity {} in {}", id.id(), path.display());
        }
        Ok((id, lock))
    }

    /// Loads (or creates) the identity without locking it: for `dial`, which only looks up and
    /// never registers, so it may run beside an `answer` of the same identity.
    pub fn load_identity(&self) -> anyhow::Result<Identity> {
        let path = self.identity_path()?;
        let (id, created) = Identity::load_or_create(&path)
            .with_context(|| format!("identity {}", path.display()))?;
        if created {
            tracing::info!("created identity {} in {}", id.id(), path.display());
        }
        Ok(id)
    }

    /// The supernodes to try: the flags first, then the host cache.
    pub async fn supernodes(&self) -> anyhow::Result<Vec<(NodeKey, SocketAddr)>> {
        let mut entries = self.supernodes.clone();
        if let Ok(p) = self.host_cache_path() {
            for e in read_host_cache(&p) {
                if !entries.iter().any(|x| x.key.id == e.key.id) {
                    entries.push(e);
                }
            }
        }
        if entries.is_empty() {
            return Err(usage(
                "no supernode: give --supernode KEY@HOST:PORT (printed by supernoded at start)",
            ));
        }
        resolve_bootstrap(&entries)
            .await
            .context("cannot resolve a supernode")
    }

    /// The contacts file: `--contacts`, else `contacts` next to the identity.
    pub fn contacts_path(&self) -> Option<PathBuf> {
        match &self.contacts {
            Some(p) => Some(p.clone()),
            None => self.dir().ok().map(|d| d.join("contacts")),
        }
    }

    /// Resolves what the user typed: an ID, a contact alias, or a name for the directory.
    pub fn target(&self, input: &str) -> anyhow::Result<Target> {
        let path = self.contacts_path();
        let contacts = match path {
            Some(p) if p.exists() => {
                Contacts::load(&p).with_context(|| format!("contacts {}", p.display()))?
            }
            _ => Contacts::default(),
        };
        match contacts.resolve(input) {
            Ok(ContactTarget::Id(id)) => Ok(Target::Id(id)),
            Ok(ContactTarget::Name(n)) => Ok(Target::Name(n)),
            Err(e) => Err(usage(e.to_string())),
        }
    }
}

/// A running agent: commands in, events out.
pub struct Running {
    pub commands: mpsc::Sender<AgentCommand>,
    pub events: mpsc::Receiver<AgentEvent>,
    pub stop: ShutdownSignal,
    pub task: tokio::task::JoinHandle<std::io::Result<Agent>>,
}

/// Starts the directory agent on a fresh socket.
pub async fn start_agent(
    args: &DirectoryArgs,
    identity: Identity,
    mut config: AgentConfig,
) -> anyhow::Result<Running> {
    config.supernodes = args.supernodes().await?;
    let socket = tokio::net::UdpSocket::bind(args.bind)
        .await
        .with_context(|| format!("cannot bind UDP {}", args.bind))?;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Record sequence numbers from the millisecond clock (see `AgentConfig::first_seq`).
    config.first_seq = Some(unix.as_millis() as u64);
    let unix = unix.as_secs();
    let agent = Agent::new(identity, config, Instant::now(), unix, rand::random());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (stop, shutdown): (ShutdownSignal, Shutdown) = ShutdownSignal::new();
    let task = tokio::spawn(run_agent(agent, socket, cmd_rx, ev_tx, shutdown));
    Ok(Running {
        commands: cmd_tx,
        events: ev_rx,
        stop,
        task,
    })
}
