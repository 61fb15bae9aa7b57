//! The receive-side replay window (RFC 6479's bitmap ring, as WireGuard and IPsec use).
//!
//! UDP reorders, so a receiver cannot demand strictly increasing nonces; it remembers which of
//! the last [`WINDOW`] nonces below the highest one it has seen, and refuses repeats and anything
//! older. 512 nonces are 8 times IPsec's customary 64 and far beyond the reordering depth a real
//! path produces (a few packets); at 64 bits per word the ring is 72 bytes, and a supernode keeps
//! one per connected client. The check runs before decryption (it is cheap, and replays then cost nothing);
//! the nonce is recorded only after the frame authenticated, so forged frames cannot move the
//! window.

/// Nonces remembered below the highest seen.
pub const WINDOW: u64 = 512;
const WORDS: usize = WINDOW as usize / 64 + 1;

/// Why a nonce was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before.
    Replayed,
    /// Older than the window: may or may not be a replay, cannot tell, so refused.
    TooOld,
}

/// The set of recently received nonces.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    max: Option<u64>,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            max: None,
            ring: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    fn bit(n: u64) -> (usize, u64) {
        (((n / 64) % WORDS as u64) as usize, 1u64 << (n % 64))
    }

    /// Whether `n` would be accepted (does not record it).
    pub fn check(&self, n: u64) -> Result<(), ReplayError> {
        match self.max {
            None => Ok(()),
            Some(m) if n > m => Ok(()),
            Some(m) if m - n >= WINDOW => Err(ReplayError::TooOld),
            Some(_) => {
                let (w, b) = Self::bit(n);
                if self.ring[w] & b != 0 {
                    Err(ReplayError::Replayed)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Records `n`, which must have passed [`ReplayWindow::check`] and authenticated.
    pub fn insert(&mut self, n: u64) {
        match self.max {
            Some(m) if n <= m => {}
            Some(m) => {
                let (old, new) = (m / 64, n / 64);
                if new - old >= WORDS as u64 {
                    self.ring = [0; WORDS];
                } else {
                    for block in old + 1..=new {
                        self.ring[(block % WORDS as u64) as usize] = 0;
                    }
                }
                self.max = Some(n);
            }
            None => self.max = Some(n),
        }
        let (w, b) = Self::bit(n);
        self.ring[w] |= b;
    }

    /// Checks and records in one step.
    pub fn accept(&mut self, n: u64) -> Result<(), ReplayError> {
        self.check(n)?;
        self.insert(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (name, nonces received in order, wanted results)
        type Case = (
            &'static str,
            &'static [u64],
            &'static [Result<(), ReplayError>],
        );
        let cases: &[Case] = &[
            ("in order", &[0, 1, 2, 3], &[Ok(()); 4]),
            ("duplicate", &[5, 5], &[Ok(()), Err(ReplayError::Replayed)]),
            (
                "reordered within window",
                &[10, 7, 9, 8, 7],
                &[Ok(()), Ok(()), Ok(()), Ok(()), Err(ReplayError::Replayed)],
            ),
            (
                "edge of window",
                &[3000, 3000 - (WINDOW - 1), 3000 - WINDOW],
                &[Ok(()), Ok(()), Err(ReplayError::TooOld)],
            ),
            (
                "big jump clears",
                &[1, 100_000, 1, 99_999],
                &[Ok(()), Ok(()), Err(ReplayError::TooOld), Ok(())],
            ),
            (
                "starts high",
                &[u64::MAX - 1, u64::MAX - 1],
                &[Ok(()), Err(ReplayError::Replayed)],
            ),
        ];
        for (name, ops, want) in cases {
            let mut w = ReplayWindow::default();
            let got: Vec<_> = ops.iter().map(|&n| w.accept(n)).collect();
            assert_eq!(&got[..], *want, "{name}");
        }
    }

    #[test]
    fn every_nonce_in_a_shuffled_range_is_accepted_once() {
        use rand::seq::SliceRandom;
        use rand::{SeedableRng, rngs::SmallRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let mut w = ReplayWindow::default();
        // Blocks of 250 shuffled nonces: reordering well inside the window.
        for block in 0..80u64 {
            let mut v: Vec<u64> = (block * 250..block * 250 + 250).collect();
            v.shuffle(&mut rng);
            for &n in &v {
                assert_eq!(w.accept(n), Ok(()), "{n}");
            }
            for &n in &v {
                assert!(w.accept(n).is_err(), "{n} accepted twice");
            }
        }
    }
}
