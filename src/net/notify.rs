//! systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram of
//! `KEY=VALUE` lines to the unix socket named in `$NOTIFY_SOCKET`, a path or, when it starts
//! with '@', a name in Linux's abstract namespace.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. "READY=1", "STOPPING=1") to the service manager. Without
/// `$NOTIFY_SOCKET` (not started by systemd with Type=notify) it does nothing.
pub fn sd_notify(state: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.into_encoded_bytes();
    let addr = match path.strip_prefix(b"@") {
        Some(name) => abstract_addr(name)?,
        None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

use std::os::unix::ffi::OsStrExt;

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// [`sd_notify`], logging rather than failing: a daemon keeps serving when the manager's
/// socket is gone.
pub fn notify(state: &str) {
    if let Err(e) = sd_notify(state) {
        tracing::warn!("cannot notify the service manager ({state}): {e}");
    }
}
