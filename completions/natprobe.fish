complete -c natprobe -s s -l server -d 'STUN server as HOST[:PORT] (default port 3478); repeat for several, in order of preference' -r
complete -c natprobe -l lifetime-max -d 'Longest binding lifetime to search for, in seconds' -r
complete -c natprobe -l blocked-after -d 'Total silence, in seconds, after which UDP counts as blocked (at most 3)' -r
complete -c natprobe -l json -d 'Print exactly one JSON object on stdout instead of the summary'
complete -c natprobe -l lifetime -d 'Also measure how long an idle UDP binding lives (takes about that long)'
complete -c natprobe -s 4 -l ipv4 -d 'Resolve server names to IPv4 addresses only'
complete -c natprobe -s 6 -l ipv6 -d 'Resolve server names to IPv6 addresses only'
complete -c natprobe -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c natprobe -s q -l quiet -d 'Log only errors'
complete -c natprobe -s h -l help -d 'Print help (see more with \'--help\')'
complete -c natprobe -s V -l version -d 'Print version'
