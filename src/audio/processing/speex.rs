//! speexdsp: the MDF echo canceller and the preprocessor (residual echo suppression, denoiser,
//! AGC), linked from the system library.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use super::{CHUNK, Engine, ProcessingConfig, ProcessingError};

#[link(name = "speexdsp")]
unsafe extern "C" {
    fn speex_echo_state_init(frame_size: c_int, filter_length: c_int) -> *mut c_void;
    fn speex_echo_state_destroy(st: *mut c_void);
    fn speex_echo_cancellation(st: *mut c_void, rec: *const i16, play: *const i16, out: *mut i16);
    fn speex_echo_ctl(st: *mut c_void, request: c_int, ptr: *mut c_void) -> c_int;
    fn speex_preprocess_state_init(frame_size: c_int, sampling_rate: c_int) -> *mut c_void;
    fn speex_preprocess_state_destroy(st: *mut c_void);
    fn speex_preprocess_run(st: *mut c_void, x: *mut i16) -> c_int;
    fn speex_preprocess_ctl(st: *mut c_void, request: c_int, ptr: *mut c_void) -> c_int;
}

// speex_echo.h and speex_preprocess.h.
const ECHO_SET_SAMPLING_RATE: c_int = 24;
const PREPROCESS_SET_DENOISE: c_int = 0;
const PREPROCESS_SET_AGC: c_int = 2;
const PREPROCESS_SET_ECHO_STATE: c_int = 24;

/// The adaptive filter's length: 250 ms of room at 48 kHz (a small room's reverberation).
const FILTER: c_int = 12_000;

/// Render chunks waiting for their capture chunk: MDF takes both at once. More than this
/// means capture stopped; the oldest are dropped.
const QUEUE: usize = 20;

pub struct Mdf {
    echo: Option<NonNull<c_void>>,
    pre: Option<NonNull<c_void>>,
    queue: VecDeque<[i16; CHUNK]>,
    buf: [i16; CHUNK],
    out: [i16; CHUNK],
}

// Both states are only touched through `&mut self`.
unsafe impl Send for Mdf {}

impl Mdf {
    pub fn new(c: ProcessingConfig) -> Result<Mdf, ProcessingError> {
        let fail = ProcessingError::Setup(Engine::Speex);
        let mut m = Mdf {
            echo: None,
            pre: None,
            queue: VecDeque::new(),
            buf: [0; CHUNK],
            out: [0; CHUNK],
        };
        let mut rate: c_int = crate::audio::CALL_RATE as c_int;
        if c.aec {
            // SAFETY: plain values in, an owned state (or null) out.
            let e = NonNull::new(unsafe { speex_echo_state_init(CHUNK as c_int, FILTER) })
                .ok_or(fail)?;
            m.echo = Some(e);
            // SAFETY: the request takes a pointer to an int.
            unsafe { speex_echo_ctl(e.as_ptr(), ECHO_SET_SAMPLING_RATE, ptr(&mut rate)) };
        }
        let fail = ProcessingError::Setup(Engine::Speex);
        // SAFETY: as above.
        let p = NonNull::new(unsafe { speex_preprocess_state_init(CHUNK as c_int, rate) })
            .ok_or(fail)?;
        m.pre = Some(p);
        let (mut ns, mut agc): (c_int, c_int) = (c.ns.into(), c.agc.into());
        // SAFETY: int pointers for the switches; the echo state outlives the preprocessor (Drop).
        unsafe {
            speex_preprocess_ctl(p.as_ptr(), PREPROCESS_SET_DENOISE, ptr(&mut ns));
            speex_preprocess_ctl(p.as_ptr(), PREPROCESS_SET_AGC, ptr(&mut agc));
            if let Some(e) = m.echo {
                // Residual echo suppression, from the canceller's own estimate of what is left.
                speex_preprocess_ctl(p.as_ptr(), PREPROCESS_SET_ECHO_STATE, e.as_ptr());
            }
        }
        Ok(m)
    }

    pub fn render(&mut self, chunk: &[f32]) {
        if self.echo.is_none() {
            return;
        }
        if self.queue.len() == QUEUE {
            self.queue.pop_front();
        }
        let mut c = [0i16; CHUNK];
        to_i16(chunk, &mut c);
        self.queue.push_back(c);
    }

    pub fn capture(&mut self, chunk: &mut [f32]) {
        to_i16(chunk, &mut self.buf);
        if let Some(e) = self.echo {
            let play = self.queue.pop_front().unwrap_or([0; CHUNK]);
            // SAFETY: three CHUNK-long buffers, as the state was made for.
            unsafe {
                speex_echo_cancellation(
                    e.as_ptr(),
                    self.buf.as_ptr(),
                    play.as_ptr(),
                    self.out.as_mut_ptr(),
                )
            };
            self.buf = self.out;
        }
        if let Some(p) = self.pre {
            // SAFETY: a CHUNK-long buffer, processed in place.
            unsafe { speex_preprocess_run(p.as_ptr(), self.buf.as_mut_ptr()) };
        }
        for (o, &s) in chunk.iter_mut().zip(&self.buf) {
            *o = f32::from(s) / 32768.0;
        }
    }
}

fn ptr(v: &mut c_int) -> *mut c_void {
    (v as *mut c_int).cast()
}

fn to_i16(x: &[f32], out: &mut [i16; CHUNK]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
    }
}

impl Drop for Mdf {
    fn drop(&mut self) {
        // SAFETY: made by the init functions, freed once, the preprocessor (which points at
        // the echo state) first.
        unsafe {
            if let Some(p) = self.pre.take() {
                speex_preprocess_state_destroy(p.as_ptr());
            }
            if let Some(e) = self.echo.take() {
                speex_echo_state_destroy(e.as_ptr());
            }
        }
    }
}
