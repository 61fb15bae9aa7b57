//! RNNoise (a small recurrent network that estimates per-band speech gains) through the
//! pure-Rust `nnnoiseless`: a noise suppressor to set against WebRTC's and speexdsp's.

use nnnoiseless::DenoiseState;

use super::CHUNK;

pub struct Rnn {
    state: Box<DenoiseState<'static>>,
    input: [f32; CHUNK],
}

impl Rnn {
    pub fn new() -> Rnn {
        debug_assert_eq!(DenoiseState::FRAME_SIZE, CHUNK);
        Rnn {
            state: DenoiseState::new(),
            input: [0.0; CHUNK],
        }
    }

    /// Denoises a 10 ms chunk in place (RNNoise works on 16-bit sample values).
    pub fn process(&mut self, chunk: &mut [f32]) {
        for (i, &v) in self.input.iter_mut().zip(chunk.iter()) {
            *i = v * 32768.0;
        }
        self.state.process_frame(chunk, &self.input);
        for v in chunk.iter_mut() {
            *v /= 32768.0;
        }
    }
}
