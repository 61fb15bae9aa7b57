complete -c answer -s s -l supernode -d 'A supernode as KEY@HOST:PORT (what `supernoded` prints); repeat for several' -r
complete -c answer -l identity -d 'Identity key file (created on first use, mode 0600); default under $XDG_CONFIG_HOME/voxmesh' -r -F
complete -c answer -l host-cache -d 'Host cache file (supernodes learnt from the mesh); default next to the identity' -r -F
complete -c answer -l contacts -d 'Contacts file (aliases for IDs); default next to the identity' -r -F
complete -c answer -l bind -d 'Local UDP address to use' -r
complete -c answer -l name -d 'Claim this human name (first come, first served)' -r
complete -c answer -l watch -d 'Watch this user\'s presence (ID, contact alias or name); repeat for several' -r
complete -c answer -l answer-after -d 'Accept every call after it rang this many seconds' -r
complete -c answer -l play -d 'Play this to every caller (a file, or - for raw PCM on stdin: first call only)' -r -F
complete -c answer -l record -d 'Record what callers say (a file, or - for raw PCM on stdout). With --max-calls above 1, each call gets its own file: the call ID goes before the extension' -r -F
complete -c answer -l exec -d 'Run CMD per call with the call\'s audio on its stdin/stdout (see below)' -r
complete -c answer -l max-calls -d 'Calls at once; beyond, callers get busy' -r
complete -c answer -l duration -d 'Hang up each call this many seconds after it connects' -r
complete -c answer -l events -d 'Write events here instead of stdout (needed when stdout carries audio)' -r -F
complete -c answer -l media-trace -d 'Write every audio packet sent (its Opus bytes, when) and received (timestamp, arrival, late or not), and when each frame went to playout, to this file as JSON lines: what scripts/bench-media decodes offline and scripts/bench-delay times' -r -F
complete -c answer -l control -d 'Read control commands (JSON lines) from this file, or - for stdin' -r -F
complete -c answer -l max-relay-kbps -d 'Relay at most this many kbit/s (each relayed allocation is capped to it; below 1024 the relay role is never taken)' -r
complete -c answer -l uplink-kbps -d 'Spare uplink this host offers, in kbit/s (declared, not measured)' -r
complete -c answer -l promote-after -d 'Test and operator knob: promote after this many seconds of stable uptime instead of 5 min (relay) and 15 min (supernode); the jitter becomes a quarter of it' -r
complete -c answer -l cpu-headroom -d 'Test knob: take this CPU headroom (0-1) as measured instead of reading /proc/stat' -r
complete -c answer -l relay-allow-peer -d 'Test knob: the hosted relay may relay to this block (as relayd\'s --allow-peer)' -r
complete -c answer -l auto -d 'Accept every call at once'
complete -c answer -l relay-only -d 'Offer the peer no address of ours, only a relay\'s: the call goes through the relay (privacy; or to use the relay path on purpose)'
complete -c answer -l dtx -d 'Discontinuous transmission: in silence (and while muted) send a packet only every 400 ms; the far end plays comfort noise. Saves bandwidth; consent checks and keepalives keep the path open meanwhile'
complete -c answer -l no-redundancy -d 'Never send redundant audio. By default, while the far end reports random loss on a path with room, each packet also carries the one before (RFC 2198), so a lost packet plays whole: twice the audio payload (64 kbit/s instead of 32). Without it, the sender codes Opus\'s in-band FEC instead (coarser, at 48 kbit/s)'
complete -c answer -l aec -d 'Cancel the speaker\'s echo in the audio sent (on by default with the microphone and speaker; for file or pipe audio, the far end\'s audio as it goes to --record is the echo reference)'
complete -c answer -l ns -d 'Suppress background noise in the audio sent (on by default with the microphone)'
complete -c answer -l agc -d 'Automatic gain control of the audio sent (on by default with the microphone)'
complete -c answer -l no-audio-processing -d 'No echo cancellation, noise suppression or gain control, not even with the microphone and speaker'
complete -c answer -l no-relay -d 'Never become a relay for other users\' calls'
complete -c answer -l no-supernode -d 'Never become a supernode (a directory node of the mesh)'
complete -c answer -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c answer -s q -l quiet -d 'Log only errors'
complete -c answer -s h -l help -d 'Print help (see more with \'--help\')'
complete -c answer -s V -l version -d 'Print version'
