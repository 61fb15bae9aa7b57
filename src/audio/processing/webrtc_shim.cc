// A C face for WebRTC's audio processing module (webrtc-audio-processing 0.3, the PulseAudio
// extraction Debian ships): its API is C++ classes, which Rust cannot call directly. One
// instance per call; 10 ms mono float frames at 48 kHz in both directions.
#include <webrtc/modules/audio_processing/include/audio_processing.h>

using webrtc::AudioProcessing;
using webrtc::StreamConfig;

namespace {
const int kRate = 48000;
}

extern "C" {

// Null when the library refuses the configuration.
void* voxmesh_apm_new(int aec, int ns, int agc) {
  webrtc::Config config;
  // The extended filter spans 128 ms of room instead of 48 ms; delay-agnostic mode finds the
  // render-to-capture delay itself (a sound card's buffering is not known here).
  config.Set<webrtc::ExtendedFilter>(new webrtc::ExtendedFilter(true));
  config.Set<webrtc::DelayAgnostic>(new webrtc::DelayAgnostic(true));
  // The experimental AGC drives an analog microphone volume, which we do not control.
  config.Set<webrtc::ExperimentalAgc>(new webrtc::ExperimentalAgc(false));
  AudioProcessing* apm = AudioProcessing::Create(config);
  if (!apm) return nullptr;
  bool ok = true;
  ok &= apm->high_pass_filter()->Enable(true) == 0;
  if (aec) {
    ok &= apm->echo_cancellation()->enable_drift_compensation(false) == 0;
    ok &= apm->echo_cancellation()->set_suppression_level(
              webrtc::EchoCancellation::kHighSuppression) == 0;
    ok &= apm->echo_cancellation()->enable_metrics(true) == 0;
    ok &= apm->echo_cancellation()->Enable(true) == 0;
  }
  if (ns) {
    ok &= apm->noise_suppression()->set_level(webrtc::NoiseSuppression::kHigh) == 0;
    ok &= apm->noise_suppression()->Enable(true) == 0;
  }
  if (agc) {
    ok &= apm->gain_control()->set_mode(webrtc::GainControl::kAdaptiveDigital) == 0;
    ok &= apm->gain_control()->set_target_level_dbfs(3) == 0;
    ok &= apm->gain_control()->set_compression_gain_db(9) == 0;
    ok &= apm->gain_control()->enable_limiter(true) == 0;
    ok &= apm->gain_control()->Enable(true) == 0;
  }
  if (!ok) {
    delete apm;
    return nullptr;
  }
  return apm;
}

void voxmesh_apm_free(void* apm) { delete static_cast<AudioProcessing*>(apm); }

// The far end's 10 ms as it goes to the speaker. 0, or the library's error code.
int voxmesh_apm_render(void* p, const float* frame) {
  AudioProcessing* apm = static_cast<AudioProcessing*>(p);
  StreamConfig cfg(kRate, 1);
  float copy[kRate / 100];
  const float* src[1] = {frame};
  float* dst[1] = {copy};
  return apm->ProcessReverseStream(src, cfg, cfg, dst);
}

// The microphone's 10 ms, cleaned in place; `delay_ms` is the playout-to-capture delay as far
// as it is known (the delay-agnostic mode refines it). 0, or the library's error code.
int voxmesh_apm_capture(void* p, float* frame, int delay_ms) {
  AudioProcessing* apm = static_cast<AudioProcessing*>(p);
  StreamConfig cfg(kRate, 1);
  apm->set_stream_delay_ms(delay_ms);
  float* chans[1] = {frame};
  return apm->ProcessStream(chans, cfg, cfg, chans);
}

// The canceller's own echo return loss enhancement estimate (dB, the running average), or
// -100 when it has none (no canceller, or no metrics yet).
float voxmesh_apm_erle(void* p) {
  AudioProcessing* apm = static_cast<AudioProcessing*>(p);
  if (!apm->echo_cancellation()->is_enabled()) return -100.0f;
  webrtc::EchoCancellation::Metrics m;
  if (apm->echo_cancellation()->GetMetrics(&m) != 0) return -100.0f;
  return static_cast<float>(m.echo_return_loss_enhancement.average);
}

}  // extern "C"
