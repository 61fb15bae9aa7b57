//! A tiny seeded generator (splitmix64): the jitter must be reproducible from a seed across
//! platforms and crate versions, which a simulator comparing runs relies on.

#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max_ms` (modulo bias is negligible for spans of minutes).
    pub(crate) fn below_ms(&mut self, max_ms: u64) -> u64 {
        if max_ms == 0 {
            0
        } else {
            self.next_u64() % (max_ms + 1)
        }
    }
}
