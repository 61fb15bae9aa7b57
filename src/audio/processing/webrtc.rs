//! WebRTC's audio processing module through our C shim (`webrtc_shim.cc`, built by build.rs).

use std::ffi::{c_float, c_int, c_void};
use std::ptr::NonNull;

use super::{CHUNK, Engine, ProcessingConfig, ProcessingError};

unsafe extern "C" {
    fn voxmesh_apm_new(aec: c_int, ns: c_int, agc: c_int) -> *mut c_void;
    fn voxmesh_apm_free(apm: *mut c_void);
    fn voxmesh_apm_render(apm: *mut c_void, frame: *const c_float) -> c_int;
    fn voxmesh_apm_capture(apm: *mut c_void, frame: *mut c_float, delay_ms: c_int) -> c_int;
    fn voxmesh_apm_erle(apm: *mut c_void) -> c_float;
}

/// One `webrtc::AudioProcessing` instance, and the render-to-capture delay we report (the
/// delay-agnostic mode's starting point).
pub struct Apm(NonNull<c_void>, c_int);

// The instance is only touched through `&mut self`; the library keeps no thread affinity.
unsafe impl Send for Apm {}

impl Apm {
    pub fn new(c: ProcessingConfig) -> Result<Apm, ProcessingError> {
        // SAFETY: plain values in; a pointer we own (or null) out.
        let p = unsafe { voxmesh_apm_new(c.aec.into(), c.ns.into(), c.agc.into()) };
        NonNull::new(p)
            .map(|p| Apm(p, c.delay_ms.min(500) as c_int))
            .ok_or(ProcessingError::Setup(Engine::Webrtc))
    }

    pub fn render(&mut self, chunk: &[f32]) -> Result<(), ProcessingError> {
        assert_eq!(chunk.len(), CHUNK);
        // SAFETY: the shim reads exactly CHUNK floats.
        check(unsafe { voxmesh_apm_render(self.0.as_ptr(), chunk.as_ptr()) })
    }

    pub fn capture(&mut self, chunk: &mut [f32]) -> Result<(), ProcessingError> {
        assert_eq!(chunk.len(), CHUNK);
        // SAFETY: the shim reads and writes exactly CHUNK floats.
        check(unsafe { voxmesh_apm_capture(self.0.as_ptr(), chunk.as_mut_ptr(), self.1) })
    }

    pub fn erle(&self) -> Option<f32> {
        // SAFETY: a live instance.
        let e = unsafe { voxmesh_apm_erle(self.0.as_ptr()) };
        (e > -100.0).then_some(e)
    }
}

fn check(code: c_int) -> Result<(), ProcessingError> {
    match code {
        0 => Ok(()),
        code => Err(ProcessingError::Library {
            engine: Engine::Webrtc,
            code,
        }),
    }
}

impl Drop for Apm {
    fn drop(&mut self) {
        // SAFETY: made by voxmesh_apm_new, freed once.
        unsafe { voxmesh_apm_free(self.0.as_ptr()) }
    }
}
