complete -c dial -l play -d 'Audio to send: a file, or - for raw PCM on stdin' -r -F
complete -c dial -l record -d 'Where to write the audio received: a file, or - for raw PCM on stdout' -r -F
complete -c dial -l duration -d 'Hang up this many seconds after the call connects' -r
complete -c dial -l dtmf -d 'Send these keypad digits (0-9, *, #, A-D) once the call connects' -r
complete -c dial -l events -d 'Write events here instead of stdout (needed when stdout carries audio)' -r -F
complete -c dial -l media-trace -d 'Write every audio packet sent (its Opus bytes, when) and received (timestamp, arrival, late or not), and when each frame went to playout, to this file as JSON lines: what scripts/bench-media decodes offline and scripts/bench-delay times' -r -F
complete -c dial -l clock-ppm -d 'Test knob: run this end\'s audio clock (capture and playout ticks) this many ppm fast, to measure clock drift between two ends that share one machine\'s clock' -r
complete -c dial -l control -d 'Read control commands (JSON lines) from this file, or - for stdin' -r -F
complete -c dial -l ring-timeout -d 'Give up ringing ("no answer", exit 8) after this many seconds' -r
complete -c dial -l timeout -d 'Give up when no supernode answers (or a --lookup gets no answer) within this many seconds' -r
complete -c dial -s s -l supernode -d 'A supernode as KEY@HOST:PORT (what `supernoded` prints); repeat for several' -r
complete -c dial -l identity -d 'Identity key file (created on first use, mode 0600); default under $XDG_CONFIG_HOME/voxmesh' -r -F
complete -c dial -l host-cache -d 'Host cache file (supernodes learnt from the mesh); default next to the identity' -r -F
complete -c dial -l contacts -d 'Contacts file (aliases for IDs); default next to the identity' -r -F
complete -c dial -l bind -d 'Local UDP address to use' -r
complete -c dial -l lookup -d 'Print the directory record of USER and exit'
complete -c dial -l relay-only -d 'Offer the peer no address of ours, only a relay\'s: the call goes through the relay (privacy; or to use the relay path on purpose)'
complete -c dial -l dtx -d 'Discontinuous transmission: in silence (and while muted) send a packet only every 400 ms; the far end plays comfort noise. Saves bandwidth; consent checks and keepalives keep the path open meanwhile'
complete -c dial -l no-redundancy -d 'Never send redundant audio. By default, while the far end reports random loss on a path with room, each packet also carries the one before (RFC 2198), so a lost packet plays whole: twice the audio payload (64 kbit/s instead of 32). Without it, the sender codes Opus\'s in-band FEC instead (coarser, at 48 kbit/s)'
complete -c dial -l aec -d 'Cancel the speaker\'s echo in the audio sent (on by default with the microphone and speaker; for file or pipe audio, the far end\'s audio as it goes to --record is the echo reference)'
complete -c dial -l ns -d 'Suppress background noise in the audio sent (on by default with the microphone)'
complete -c dial -l agc -d 'Automatic gain control of the audio sent (on by default with the microphone)'
complete -c dial -l no-audio-processing -d 'No echo cancellation, noise suppression or gain control, not even with the microphone and speaker'
complete -c dial -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c dial -s q -l quiet -d 'Log only errors'
complete -c dial -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dial -s V -l version -d 'Print version'
