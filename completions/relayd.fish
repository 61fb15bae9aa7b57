complete -c relayd -s l -l listen -d 'Listen on ADDR for every transport, or on TRANSPORT:ADDR for one (repeatable)' -r
complete -c relayd -l cert -d 'Certificate chain (PEM) for TLS listeners' -r -F
complete -c relayd -l key -d 'Private key (PEM) for TLS listeners' -r -F
complete -c relayd -l relay-ip -d 'Address to relay from (one per family); defaults to the listening addresses' -r
complete -c relayd -l external-ip -d 'Public address to report for a relay behind 1:1 NAT: PUBLIC or PUBLIC/PRIVATE' -r
complete -c relayd -l relay-ports -d 'UDP port range for relayed addresses' -r
complete -c relayd -l realm -d 'Authentication realm' -r
complete -c relayd -l users -d 'Users file: `user:password` lines (or `user:0x<hex key>`), re-read on SIGHUP' -r -F
complete -c relayd -l user -d 'A user as USER:PASSWORD (repeatable; for tests and small setups)' -r
complete -c relayd -l auth-secret -d 'Shared secret for time-limited credentials; repeat to accept previous secrets' -r
complete -c relayd -l auth-secret-file -d 'File of shared secrets, one per line, current first; re-read on SIGHUP' -r -F
complete -c relayd -l allow-peer -d 'Allow peers in this block even if it is special-purpose (repeatable). A bare address is a block of one; a block with host bits set (10.1.2.3/8) is refused as ambiguous' -r
complete -c relayd -l user-quota -d 'Concurrent allocations per username' -r
complete -c relayd -l source-quota -d 'Concurrent allocations, and TCP/TLS connections, per client IPv4 address or IPv6 /64' -r
complete -c relayd -l total-quota -d 'Concurrent allocations, and TCP/TLS connections, in total' -r
complete -c relayd -l max-bps -d 'Bandwidth cap per allocation in bytes per second (both directions); 0 for none' -r
complete -c relayd -l alternate-server -d 'While draining, send new allocations here (300 ALTERNATE-SERVER)' -r
complete -c relayd -l nonce-lifetime -d 'Seconds a nonce stays valid; an older one gets 438 Stale Nonce, with a fresh nonce to retry with' -r
complete -c relayd -l drain -d 'At most this many seconds of relaying for live allocations after SIGTERM (relayd exits as soon as the last one ends, at once when there is none)' -r
complete -c relayd -l metrics -d 'Serve Prometheus metrics over HTTP on this address' -r
complete -c relayd -l supernode -d 'Authorise this supernode to hand out credentials for this relay, as KEY@HOST:PORT (repeatable). relayd opens a session to it, gives it a secret of its own (rotated hourly) and reports its load; clients then find the relay through the supernode' -r
complete -c relayd -l identity -d 'This relay\'s key file for --supernode sessions (created on first start, mode 0600; default: $STATE_DIRECTORY/relay.key under systemd, else relay.key in the voxmesh config directory, ~/.config/voxmesh)' -r -F
complete -c relayd -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c relayd -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c relayd -s q -l quiet -d 'Log only errors'
complete -c relayd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relayd -s V -l version -d 'Print version'
