//! Builds the C++ shim over WebRTC's audio processing and links it and speexdsp (feature
//! `devices` only: relay and supernode builds need no C++ compiler and no audio libraries).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "devices")]
    audio_processing();
}

#[cfg(feature = "devices")]
fn audio_processing() {
    const SHIM: &str = "src/audio/processing/webrtc_shim.cc";
    println!("cargo:rerun-if-changed={SHIM}");
    let webrtc = pkg_config::Config::new()
        .probe("webrtc-audio-processing")
        .expect("webrtc-audio-processing 0.3 (Debian: libwebrtc-audio-processing-dev; scripts/setup installs it)");
    pkg_config::Config::new()
        .probe("speexdsp")
        .expect("speexdsp (Debian: libspeexdsp-dev; scripts/setup installs it)");
    let mut build = cc::Build::new();
    build.cpp(true).file(SHIM).flag_if_supported("-std=c++11");
    // As system headers: the library's own headers have warnings that are not ours.
    for dir in &webrtc.include_paths {
        build.flag("-isystem").flag(dir.to_string_lossy().as_ref());
    }
    for (k, v) in &webrtc.defines {
        build.define(k, v.as_deref());
    }
    build.compile("voxmesh_apm");
}
