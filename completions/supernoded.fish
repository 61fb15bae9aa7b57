complete -c supernoded -s l -l listen -d 'UDP address to serve STUN on; repeat for IPv4 and IPv6' -r
complete -c supernoded -l alt-addr -d 'Alternate address for RFC 5780, as IP or IP:PORT (port defaults to the listen port + 1); pairs with the --listen address of its family' -r
complete -c supernoded -l metrics -d 'Serve Prometheus metrics over HTTP on this address' -r
complete -c supernoded -l no-rfc5780 -d 'Serve plain STUN only: no CHANGE-REQUEST, RESPONSE-PORT, PADDING or OTHER-ADDRESS'
complete -c supernoded -l no-software -d 'Leave the SOFTWARE attribute out of responses (saves 28 bytes each)'
complete -c supernoded -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c supernoded -s q -l quiet -d 'Log only errors'
complete -c supernoded -s h -l help -d 'Print help (see more with \'--help\')'
complete -c supernoded -s V -l version -d 'Print version'
