# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_pipe_audio_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_pipe_audio_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_pipe_audio_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_pipe_audio_using_subcommand
    set -l cmd (__fish_pipe_audio_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -s V -l version -d 'Print version'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "devices" -d 'List capture and playback devices with their default formats'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "capture" -d 'Record from a device to a file or stdout'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "play" -d 'Play a file or stdin on a device'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "convert" -d 'Convert between WAV, Ogg Opus and raw PCM, rates and channel layouts'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "gen" -d 'Generate a test signal: tone, dtmf, silence, sweep or clicks'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "analyze" -d 'Measure a recording: length, level, silence, DTMF digits, delay to a reference'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "bench-codec" -d 'Time a bare libopus encode/decode loop over a WAV file (for scripts/bench-pipe-audio)'
complete -c pipe-audio -n "__fish_pipe_audio_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand devices" -l json -d 'Print one JSON array instead of a table'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand devices" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand devices" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand devices" -s h -l help -d 'Print help'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l duration -d 'Stop after this many seconds (exactly that many samples) [default: until Ctrl-C]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s d -l device -d 'Device name from `pipe-audio devices` (ALSA PCM name such as null, default, hw:0,0) [default: the system default]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l pace -d 'Hold the device to real time: auto (only if it runs ahead of real time, as ALSA\'s null and file devices do), always, or never' -r -f -a "auto\t'Pace only a consumer that runs ahead of real time'
always\t'Always hold audio to real time'
never\t'Never wait (as fast as the consumer takes it)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l buffer-ms -d 'Audio buffered between the device and the file side, in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l period-ms -d 'Device period (callback size) to ask for, in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -l stats -d 'At the end, print a JSON report on stderr: timing, pacing lateness, underruns, overruns'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand capture" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s d -l device -d 'Device name from `pipe-audio devices` (ALSA PCM name such as null, default, hw:0,0) [default: the system default]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -l pace -d 'Hold the device to real time: auto (only if it runs ahead of real time, as ALSA\'s null and file devices do), always, or never' -r -f -a "auto\t'Pace only a consumer that runs ahead of real time'
always\t'Always hold audio to real time'
never\t'Never wait (as fast as the consumer takes it)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -l buffer-ms -d 'Audio buffered between the device and the file side, in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -l period-ms -d 'Device period (callback size) to ask for, in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -l stats -d 'At the end, print a JSON report on stderr: timing, pacing lateness, underruns, overruns'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand play" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l in-format -d 'Input container [default: from the file name, else the header, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l in-rate -d 'Raw input\'s rate in Hz [default: 48000]; for Ogg input, the rate to decode to' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l in-channels -d 'Raw input\'s channels [default: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l in-sample -d 'Raw input\'s sample encoding [default: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l realtime -d 'Write the output in real time (for pipes into programs that expect live audio)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -l stats -d 'With --realtime, print a JSON pacing report on stderr at the end'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand convert" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -s h -l help -d 'Print help'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "tone" -d 'A sine tone'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "dtmf" -d 'DTMF digits (0-9, *, #, A-D), each a tone then a gap'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "silence" -d 'Digital silence'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "sweep" -d 'An exponential sine sweep'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "clicks" -d 'One-sample clicks at a fixed interval (for measuring delay), the first at time 0'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and not __fish_seen_subcommand_from tone dtmf silence sweep clicks help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l freq -d 'Frequency in Hz' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l duration -d 'Length in seconds (dtmf: from the digits)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l amplitude -d 'Peak amplitude, 0 to 1 (dtmf: the sum of both tones)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -l realtime -d 'Write the output in real time'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from tone" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l tone-ms -d 'Tone length in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l gap-ms -d 'Gap after each tone in ms' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l duration -d 'Length in seconds (dtmf: from the digits)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l amplitude -d 'Peak amplitude, 0 to 1 (dtmf: the sum of both tones)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -l realtime -d 'Write the output in real time'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from dtmf" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l duration -d 'Length in seconds (dtmf: from the digits)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l amplitude -d 'Peak amplitude, 0 to 1 (dtmf: the sum of both tones)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -l realtime -d 'Write the output in real time'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from silence" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l from -d 'Start frequency in Hz' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l to -d 'End frequency in Hz' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l duration -d 'Length in seconds (dtmf: from the digits)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l amplitude -d 'Peak amplitude, 0 to 1 (dtmf: the sum of both tones)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -l realtime -d 'Write the output in real time'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from sweep" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l interval -d 'Seconds between clicks' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l duration -d 'Length in seconds (dtmf: from the digits)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l amplitude -d 'Peak amplitude, 0 to 1 (dtmf: the sum of both tones)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s o -l output -d 'Output file, or - for stdout' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -l realtime -d 'Write the output in real time'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from clicks" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "tone" -d 'A sine tone'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "dtmf" -d 'DTMF digits (0-9, *, #, A-D), each a tone then a gap'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "silence" -d 'Digital silence'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "sweep" -d 'An exponential sine sweep'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "clicks" -d 'One-sample clicks at a fixed interval (for measuring delay), the first at time 0'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand gen; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l reference -d 'A reference recording: report the delay to it and how alike they are' -r -F
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l max-delay -d 'Search the delay only within this many seconds either way [default: anywhere]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l silence-db -d 'Blocks of 10 ms quieter than this (dBFS RMS) count as silence' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l spill-after -d 'Samples of each signal kept in memory before the rest goes to a temporary file (tests use small values to reach the file path quickly)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s f -l format -d 'Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw]' -r -f -a "wav\t'RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM'
ogg\t'Ogg Opus (RFC 7845)'
raw\t'Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s r -l rate -d 'Sample rate in Hz [default: the input\'s; raw: 48000]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s c -l channels -d 'Channels [default: the input\'s; raw: 1]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s e -l sample -d 'Sample encoding for WAV and raw, as sox\'s -e and -b together [default: the input\'s; raw: s16]' -r -f -a "u8\t'Unsigned 8-bit (WAV\'s 8-bit encoding)'
s16\t'Signed 16-bit'
s24\t'Signed 24-bit, packed in 3 bytes'
s32\t'Signed 32-bit'
f32\t'IEEE 754 32-bit float'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l json -d 'Print one JSON object instead of the summary'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -l whole-fft -d 'Search the delay the old way, both signals in memory and one FFT over both (gigabytes for long recordings); for scripts/bench-analyze'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand analyze" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -l repeat -d 'Encode/decode repetitions; the fastest is reported' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -l bitrate -d 'Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc]' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -l application -d 'Opus application' -r -f -a "audio\t'Music and general audio; `opusenc` always uses this'
voip\t'Speech: what calls use'
lowdelay\t'Lowest delay (no speech mode)'"
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -l complexity -d 'Opus complexity, 0 (fastest) to 10 (best)' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -l frame-ms -d 'Opus frame length in ms: 10, 20, 40 or 60' -r
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -s q -l quiet -d 'Log only errors'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand bench-codec" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "devices" -d 'List capture and playback devices with their default formats'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "capture" -d 'Record from a device to a file or stdout'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "play" -d 'Play a file or stdin on a device'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "convert" -d 'Convert between WAV, Ogg Opus and raw PCM, rates and channel layouts'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "gen" -d 'Generate a test signal: tone, dtmf, silence, sweep or clicks'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "analyze" -d 'Measure a recording: length, level, silence, DTMF digits, delay to a reference'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "bench-codec" -d 'Time a bare libopus encode/decode loop over a WAV file (for scripts/bench-pipe-audio)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and not __fish_seen_subcommand_from devices capture play convert gen analyze bench-codec help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and __fish_seen_subcommand_from gen" -f -a "tone" -d 'A sine tone'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and __fish_seen_subcommand_from gen" -f -a "dtmf" -d 'DTMF digits (0-9, *, #, A-D), each a tone then a gap'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and __fish_seen_subcommand_from gen" -f -a "silence" -d 'Digital silence'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and __fish_seen_subcommand_from gen" -f -a "sweep" -d 'An exponential sine sweep'
complete -c pipe-audio -n "__fish_pipe_audio_using_subcommand help; and __fish_seen_subcommand_from gen" -f -a "clicks" -d 'One-sample clicks at a fixed interval (for measuring delay), the first at time 0'
