//! One process per identity: an exclusive advisory lock on the key file, held for the life of
//! the process that runs as that identity.
//!
//! Two processes with one identity are one node twice: one ID and one Noise key on two sockets,
//! so the mesh and the directory see a node that flaps between addresses and sessions that
//! replace each other. (Three `supernoded` started on one host without `--identity` once shared
//! the default key that way, silently.) So every program that *runs as* an identity — a
//! supernode, `answer`, a relay linked to supernodes — takes this lock before it uses the key,
//! and a second one is refused with [`KeyFileError::InUse`], naming the file and the holder.
//! `dial` only reads its key and never registers, so it does not lock (it can look a user up
//! beside a running `answer` of the same identity).
//!
//! Why `flock(2)` on the key file itself:
//! - The lock belongs to the file (its inode), not to a path, so every way of naming the key —
//!   a relative path, a symlink, a hard link — meets the same lock; a sibling lock file named
//!   after the path would not.
//! - The kernel drops it when the holder's last descriptor closes, which process exit does
//!   however the process ends (SIGKILL included): a stale lock never needs cleaning up, and a
//!   restart after a crash just works.
//! - It is advisory: reading the key (`dial`, a backup) is never blocked.
//! - POSIX `fcntl` record locks would report their holder's PID, but a process loses them as
//!   soon as it closes *any* descriptor of the file — one more read of the key file elsewhere
//!   in the process would drop the lock without a word. So the holder is looked up in
//!   `/proc/locks` instead, by device and inode (Linux; elsewhere the error says "another
//!   process").
//!
//! The key is created before it is locked. Creation is atomic (written under a private name,
//! then linked into place, [`Identity::save_new`]), so processes racing to create one key all
//! end up reading the same complete file, and then exactly one of them holds the lock.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::keys::{Identity, KeyFileError};

/// The lock on a key file: exclusive, released when this is dropped or the process exits. Keep
/// it alive for as long as the process runs as the identity.
#[derive(Debug)]
pub struct IdentityLock {
    /// The open key file; the lock lives on its open file description.
    file: fs::File,
    path: PathBuf,
}

impl IdentityLock {
    /// The key file, as it was named when locked.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock on the open key file `file` (named `path`), or says who holds it.
    fn acquire(file: fs::File, path: &Path) -> Result<IdentityLock, KeyFileError> {
        // A holder that exits between our failed attempt and the look-up leaves no PID to
        // report, but the lock is free then: one more attempt takes it.
        for _ in 0..2 {
            match try_flock(&file) {
                Ok(true) => {
                    return Ok(IdentityLock {
                        file,
                        path: path.to_owned(),
                    });
                }
                Ok(false) => {
                    if let Some(pid) = holder_pid(&file) {
                        return Err(KeyFileError::InUse {
                            path: path.to_owned(),
                            pid: Some(pid),
                        });
                    }
                }
                Err(source) => {
                    return Err(KeyFileError::Lock {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Err(KeyFileError::InUse {
            path: path.to_owned(),
            pid: None,
        })
    }
}

impl Identity {
    /// Loads the key file at `path` (creating it with a new identity if it does not exist, as
    /// [`Identity::load_or_create`] does) and locks it for as long as the returned
    /// [`IdentityLock`] lives. The flag says whether the file was created. Fails with
    /// [`KeyFileError::InUse`] while another process holds the lock.
    pub fn load_or_create_locked(
        path: &Path,
    ) -> Result<(Identity, bool, IdentityLock), KeyFileError> {
        let created = match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match Identity::generate().save_new(path) {
                    Ok(()) => true,
                    // Another process created it first: lock and use theirs.
                    Err(KeyFileError::Create { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists =>
                    {
                        false
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => false,
        };
        let file = fs::File::open(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        // Lock first, then read through the same descriptor: what we read is what we hold.
        let lock = IdentityLock::acquire(file, path)?;
        let identity = Identity::read_open(&lock.file, path)?;
        Ok((identity, created, lock))
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another open file description holds
/// it.
fn try_flock(file: &fs::File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// The PID holding a `flock` on `file`, from `/proc/locks`.
fn holder_pid(file: &fs::File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let text = fs::read_to_string("/proc/locks").ok()?;
    flock_holder(
        &text,
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
}

/// Finds the holder of a `flock` on the file (`major`, `minor`, `inode`) in the text of
/// `/proc/locks`, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 4242 fe:00:5359835 0 EOF` (device numbers in hex), with
/// `1: -> FLOCK ...` for a process still waiting for the lock (not a holder).
pub(crate) fn flock_holder(text: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        if f.next()? != "FLOCK" {
            return None; // a POSIX or OFD lock, or "->": a waiter
        }
        let pid: u32 = f.nth(2)?.parse().ok()?;
        let mut dev = f.next()?.split(':');
        let ma = u32::from_str_radix(dev.next()?, 16).ok()?;
        let mi = u32::from_str_radix(dev.next()?, 16).ok()?;
        let ino: u64 = dev.next()?.parse().ok()?;
        (ma == major && mi == minor && ino == inode && pid > 0).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let text = "\
1: POSIX  ADVISORY  WRITE 111 fe:00:42 0 EOF
2: FLOCK  ADVISORY  WRITE 222 fe:01:42 0 EOF
2: -> FLOCK  ADVISORY  WRITE 333 fe:00:42 0 EOF
3: OFDLCK ADVISORY  READ  -1 fe:00:42 0 EOF
4: FLOCK  ADVISORY  WRITE 444 fe:00:42 0 EOF
5: FLOCK  ADVISORY  WRITE 555 103:02:7 0 EOF
";
        // (name, major, minor, inode, holder)
        let cases = [
            (
                "holder after a waiter and other kinds",
                0xfe,
                0,
                42,
                Some(444),
            ),
            ("another device, same inode", 0xfe, 1, 42, Some(222)),
            ("hex major beyond 255", 0x103, 2, 7, Some(555)),
            ("no lock on it", 0xfe, 0, 43, None),
        ];
        for (name, major, minor, inode, want) in cases {
            assert_eq!(flock_holder(text, major, minor, inode), want, "{name}");
        }
        assert_eq!(flock_holder("garbage\n\n1:\n", 1, 1, 1), None);
    }
}
