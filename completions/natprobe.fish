complete -c natprobe -s s -l server -l supernode -d 'STUN server as HOST or HOST:PORT (default port 3478), or a supernode as KEY@HOST:PORT (what `supernoded` prints; the key is checked but not used: STUN answers are not signed); repeat for several, in order of preference. IPv4 and IPv6 servers are probed side by side' -r
complete -c natprobe -l lifetime-max -d 'Longest binding lifetime to search for, in seconds' -r
complete -c natprobe -l blocked-after -d 'Seconds after which UDP counts as blocked when no server has answered (0.62 to 3). Each server gets 33 requests spread over them: enough that a server reachable through 50% loss each way goes unheard less than once in 10,000 probes' -r
complete -c natprobe -l json -d 'Print exactly one JSON object on stdout instead of the summary'
complete -c natprobe -l lifetime -d 'Also measure how long an idle UDP binding lives (takes about that long)'
complete -c natprobe -s 4 -l ipv4 -d 'Probe IPv4 only (server names resolve to IPv4 addresses only)'
complete -c natprobe -s 6 -l ipv6 -d 'Probe IPv6 only (server names resolve to IPv6 addresses only)'
complete -c natprobe -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c natprobe -s q -l quiet -d 'Log only errors'
complete -c natprobe -s h -l help -d 'Print help (see more with \'--help\')'
complete -c natprobe -s V -l version -d 'Print version'
