//! A mono signal kept for a second look: in memory while short, then in an unlinked temporary
//! file (under `$TMPDIR`, else /tmp), so that comparing two ten-minute recordings does not need
//! both in memory. The file's pages live in the page cache, not in the process.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::xcorr::Samples;

/// Samples kept in memory before spilling to a file (16 MiB of f32).
pub const SPILL_AFTER: usize = 1 << 22;

/// Appends f32 samples; then reads them at any offset.
pub struct Spool {
    mem: Vec<f32>,
    file: Option<io::BufWriter<File>>,
    len: usize,
    spill_after: usize,
}

impl Spool {
    /// A spool that spills after `spill_after` samples (`usize::MAX`: never).
    pub fn new(spill_after: usize) -> Spool {
        Spool {
            mem: Vec::new(),
            file: None,
            len: 0,
            spill_after,
        }
    }

    /// Appends samples.
    pub fn push(&mut self, x: &[f32]) -> io::Result<()> {
        self.len += x.len();
        if self.file.is_none() && self.mem.len() + x.len() <= self.spill_after {
            self.mem.extend_from_slice(x);
            return Ok(());
        }
        if self.file.is_none() {
            let mut w = io::BufWriter::with_capacity(1 << 16, temp_file()?);
            write_f32(&mut w, &self.mem)?;
            self.mem = Vec::new();
            self.file = Some(w);
        }
        let w = self.file.as_mut().expect("spilled");
        write_f32(w, x)
    }

    /// Whether the samples went to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// The samples, when they are in memory.
    pub fn in_memory(&self) -> Option<&[f32]> {
        self.file.is_none().then_some(&self.mem[..])
    }
}

fn write_f32(w: &mut impl Write, x: &[f32]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(x.len() * 4);
    for v in x {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    w.write_all(&buf)
}

/// A new file, already unlinked: nothing is left behind whatever way the process ends.
fn temp_file() -> io::Result<File> {
    let dir = std::env::temp_dir();
    for n in 0..100u32 {
        let path: PathBuf = dir.join(format!("pipe-audio-{}-{n}.f32", std::process::id()));
        match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(io::Error::other(format!(
        "cannot create a temporary file in {}",
        dir.display()
    )))
}

impl Samples for Spool {
    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&mut self, start: usize, out: &mut [f32]) -> io::Result<()> {
        let Some(w) = &mut self.file else {
            return (&self.mem[..]).read_at(start, out);
        };
        w.flush()?;
        let n = self.len.saturating_sub(start).min(out.len());
        let mut bytes = vec![0u8; n * 4];
        w.get_ref().read_exact_at(&mut bytes, start as u64 * 4)?;
        for (d, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        out[n..].fill(0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spilled_spool_reads_back_what_went_in() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let mut s = Spool::new(100);
        for c in x.chunks(37) {
            s.push(c).unwrap();
        }
        assert!(s.spilled());
        assert_eq!(Samples::len(&s), 1000);
        let mut out = vec![1.0; 50];
        s.read_at(980, &mut out).unwrap();
        assert_eq!(&out[..20], &x[980..]);
        assert!(out[20..].iter().all(|v| *v == 0.0));
        s.read_at(3, &mut out).unwrap();
        assert_eq!(&out[..], &x[3..53]);
        let mut m = Spool::new(usize::MAX);
        m.push(&x).unwrap();
        assert_eq!(m.in_memory(), Some(&x[..]));
    }
}
