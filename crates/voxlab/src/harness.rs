//! The Rust side of the lab: builds instances with `scripts/lab`, tears them down on drop (also
//! when a test panics), and opens sockets inside namespaces.
//!
//! ```no_run
//! use voxlab::{Lab, LabNat};
//! let (lab, client) = Lab::client_behind(LabNat::Symmetric).unwrap();
//! let sock = lab.udp_socket(&client.hosts[0].ns, "0.0.0.0:0".parse().unwrap()).unwrap();
//! ```

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Deserialize;

/// NAT types the lab builds (DESIGN.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabNat {
    /// A public host on the internet bridge.
    None,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    UdpBlocked,
    /// UDP blocked, and TCP only for connections that open with TLS (a DPI firewall resets
    /// any other): a port-restricted cone NAT otherwise.
    TlsOnly,
}

impl LabNat {
    pub const ALL: [LabNat; 7] = [
        LabNat::None,
        LabNat::FullCone,
        LabNat::RestrictedCone,
        LabNat::PortRestrictedCone,
        LabNat::Symmetric,
        LabNat::UdpBlocked,
        LabNat::TlsOnly,
    ];

    /// The `scripts/lab --type` name (also natprobe's `nat` vocabulary).
    pub fn name(self) -> &'static str {
        match self {
            LabNat::None => "none",
            LabNat::FullCone => "full-cone",
            LabNat::RestrictedCone => "restricted-cone",
            LabNat::PortRestrictedCone => "port-restricted-cone",
            LabNat::Symmetric => "symmetric",
            LabNat::UdpBlocked => "udp-blocked",
            LabNat::TlsOnly => "tls-only",
        }
    }
}

/// Where a restricted cone keeps its address filter state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FilterState {
    /// Per mapping, as RFC 4787 describes.
    #[default]
    Mapping,
    /// Per box: one packet to an address from any mapping opens it for all (some real NATs).
    Box,
}

/// Options for one NAT box.
#[derive(Clone, Debug)]
pub struct BoxOpts {
    pub nat: LabNat,
    pub hairpin: bool,
    /// Binding lifetime in seconds.
    pub lifetime_s: u32,
    pub hosts: u32,
    pub filter_state: FilterState,
    /// Impairment on the WAN link (`voxlab netem` SPEC), upstream and downstream.
    pub impair_up: Option<String>,
    pub impair_down: Option<String>,
    pub seed: u64,
}

impl BoxOpts {
    pub fn new(nat: LabNat) -> BoxOpts {
        BoxOpts {
            nat,
            hairpin: false,
            lifetime_s: 30,
            hosts: 1,
            filter_state: FilterState::Mapping,
            impair_up: None,
            impair_down: None,
            seed: 1,
        }
    }

    pub fn hairpin(mut self, on: bool) -> Self {
        self.hairpin = on;
        self
    }

    pub fn lifetime(mut self, secs: u32) -> Self {
        self.lifetime_s = secs;
        self
    }

    pub fn hosts(mut self, n: u32) -> Self {
        self.hosts = n;
        self
    }

    pub fn filter_state(mut self, f: FilterState) -> Self {
        self.filter_state = f;
        self
    }

    /// The same impairment both ways.
    pub fn impair(mut self, spec: &str, seed: u64) -> Self {
        self.impair_up = Some(spec.to_string());
        self.impair_down = Some(spec.to_string());
        self.seed = seed;
        self
    }
}

/// A host in the lab, as `scripts/lab add` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct HostInfo {
    pub ns: String,
    pub ip4: String,
    pub ip6: String,
}

/// A NAT box (or public host), as `scripts/lab add` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct BoxInfo {
    #[serde(rename = "box")]
    pub index: u32,
    #[serde(rename = "type")]
    pub nat: String,
    pub nat_ns: Option<String>,
    pub wan4: String,
    pub wan6: String,
    pub hairpin: bool,
    pub lifetime_s: Option<u32>,
    pub hosts: Vec<HostInfo>,
}

/// One lab instance: a bridge, a server namespace with two addresses, and NAT boxes.
/// Dropping it deletes every namespace it made and kills what runs in them.
#[derive(Debug)]
pub struct Lab {
    id: String,
    boxes: Vec<BoxInfo>,
}

/// The server namespace's addresses (RFC 5780 needs two).
pub const SERVER4: [&str; 2] = ["198.51.100.1", "198.51.100.2"];
pub const SERVER6: [&str; 2] = ["2001:db8::1", "2001:db8::2"];

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab")
}

fn run_script(args: &[&str]) -> io::Result<String> {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "scripts/lab {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    /// Whether this process can build labs; `Err` says why not.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the NAT lab needs root (network namespaces)".into());
        }
        for tool in ["ip", "nft", "ethtool", "conntrack"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
            if !found {
                return Err(format!(
                    "the NAT lab needs '{tool}' (apt-get install iproute2 nftables ethtool conntrack)"
                ));
            }
        }
        Ok(())
    }

    /// For tests: `true` when a lab can be built. Otherwise prints why and returns `false` (the
    /// test skips) — except under `CI=true`, where a missing lab is a failure, so CI can never
    /// pass by skipping.
    pub fn ready_or_skip(test: &str) -> bool {
        match Lab::available() {
            Ok(()) => true,
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{test}: {why} (CI=true makes lab tests mandatory)")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: {why}");
                false
            }
        }
    }

    /// Builds a new instance with a unique name, first removing instances whose owner died.
    pub fn new() -> io::Result<Lab> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let _ = run_script(&["gc"]);
        let pid = std::process::id();
        let id = format!("vx{pid}n{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let owner = pid.to_string();
        let lab = Lab {
            id: id.clone(),
            boxes: Vec::new(),
        };
        interrupt::register(&id);
        run_script(&["up", &id, "--owner", &owner])?;
        Ok(lab)
    }

    /// Adds NAT box number `index` (1..=80).
    pub fn add(&mut self, index: u32, opts: &BoxOpts) -> io::Result<BoxInfo> {
        let k = index.to_string();
        let life = opts.lifetime_s.to_string();
        let hosts = opts.hosts.to_string();
        let seed = opts.seed.to_string();
        let mut args = vec!["add", &self.id, &k, "--type", opts.nat.name()];
        if opts.nat != LabNat::None {
            args.extend(["--hairpin", if opts.hairpin { "on" } else { "off" }]);
            args.extend(["--lifetime", &life, "--hosts", &hosts]);
            args.extend([
                "--filter-state",
                match opts.filter_state {
                    FilterState::Mapping => "mapping",
                    FilterState::Box => "box",
                },
            ]);
        }
        if let Some(up) = &opts.impair_up {
            args.extend(["--impair", up, "--seed", &seed]);
        }
        if let Some(down) = &opts.impair_down {
            args.extend(["--impair-down", down]);
        }
        let out = run_script(&args)?;
        let info: BoxInfo = serde_json::from_str(out.trim()).map_err(io::Error::other)?;
        self.boxes.push(info.clone());
        Ok(info)
    }

    /// "A client behind a symmetric NAT", in one call: a new lab with box 1 of that type.
    pub fn client_behind(nat: LabNat) -> io::Result<(Lab, BoxInfo)> {
        Lab::with_box(&BoxOpts::new(nat))
    }

    /// A new lab with box 1 built from `opts`.
    pub fn with_box(opts: &BoxOpts) -> io::Result<(Lab, BoxInfo)> {
        let mut lab = Lab::new()?;
        let info = lab.add(1, opts)?;
        Ok((lab, info))
    }

    /// Forgets all NAT state of box `index` (conntrack, mappings, filter sets), so the next test
    /// sees a fresh NAT.
    pub fn reset(&self, index: u32) -> io::Result<()> {
        run_script(&["reset", &self.id, &index.to_string()]).map(|_| ())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn server_ns(&self) -> String {
        format!("{}-srv", self.id)
    }

    pub fn boxes(&self) -> &[BoxInfo] {
        &self.boxes
    }

    /// `program` run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// A UDP socket bound to `addr` inside namespace `ns` (sockets keep their namespace).
    pub fn udp_socket(&self, ns: &str, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        in_netns(ns, || std::net::UdpSocket::bind(addr))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = run_script(&["down", &self.id]) {
            eprintln!("lab teardown of {} failed: {e}", self.id);
        }
        interrupt::unregister(&self.id);
    }
}

/// Teardown on Ctrl-C and SIGTERM, which skip destructors: the first lab installs handlers that
/// wake a watcher thread (through a pipe: a signal handler may do little else), which deletes
/// every live lab and then lets the signal take its default course.
mod interrupt {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Mutex, Once};

    static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();
    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the fd is set before the handler is installed.
        unsafe {
            libc::write(
                PIPE_WRITE.load(Ordering::Relaxed),
                (&byte as *const u8).cast(),
                1,
            );
        }
    }

    pub fn register(id: &str) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_string());
        INSTALL.call_once(install);
    }

    pub fn unregister(id: &str) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|l| l != id);
    }

    fn install() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: plain syscalls on owned descriptors; the handler only writes one byte.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return;
            }
            PIPE_WRITE.store(fds[1], Ordering::Relaxed);
        }
        let read_fd = fds[0];
        std::thread::spawn(move || {
            let mut byte = 0u8;
            // SAFETY: blocking read of one byte from our own pipe.
            let n = unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) };
            if n != 1 {
                return;
            }
            let ids = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for id in ids {
                let _ = super::run_script(&["down", &id]);
            }
            // SAFETY: restore the default action and re-deliver the signal to end the process
            // the way it would have ended.
            unsafe {
                libc::signal(byte as libc::c_int, libc::SIG_DFL);
                libc::raise(byte as libc::c_int);
            }
        });
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets `f` creates stay in
/// that namespace after the thread ends.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd affects only this (scoped) thread.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}
