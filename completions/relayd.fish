# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_relayd_global_optspecs
    string join \n l/listen= cert= key= no-tls relay-ip= external-ip= relay-ports= realm= users= user= auth-secret= auth-secret-file= allow-peer= user-quota= source-quota= total-quota= max-bps= alternate-server= nonce-lifetime= drain= metrics= supernode= identity= config= v/verbose q/quiet h/help V/version
end

function __fish_relayd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_relayd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_relayd_using_subcommand
    set -l cmd (__fish_relayd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c relayd -n "__fish_relayd_needs_command" -s l -l listen -d 'Listen on ADDR for every transport, or on TRANSPORT:ADDR for one (repeatable)' -r
complete -c relayd -n "__fish_relayd_needs_command" -l cert -d 'Certificate chain (PEM) for TLS listeners' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l key -d 'Private key (PEM) for TLS listeners' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l relay-ip -d 'Address to relay from (one per family); defaults to the listening addresses' -r
complete -c relayd -n "__fish_relayd_needs_command" -l external-ip -d 'Public address to report for a relay behind 1:1 NAT: PUBLIC or PUBLIC/PRIVATE' -r
complete -c relayd -n "__fish_relayd_needs_command" -l relay-ports -d 'UDP port range for relayed addresses' -r
complete -c relayd -n "__fish_relayd_needs_command" -l realm -d 'Authentication realm' -r
complete -c relayd -n "__fish_relayd_needs_command" -l users -d 'Users file: `user:password` lines (or `user:0x<hex key>`), re-read on SIGHUP' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l user -d 'A user as USER:PASSWORD (repeatable; for tests and small setups)' -r
complete -c relayd -n "__fish_relayd_needs_command" -l auth-secret -d 'Shared secret for time-limited credentials; repeat to accept previous secrets' -r
complete -c relayd -n "__fish_relayd_needs_command" -l auth-secret-file -d 'File of shared secrets, one per line, current first; re-read on SIGHUP' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l allow-peer -d 'Allow peers in this block even if it is special-purpose (repeatable). A bare address is a block of one; a block with host bits set (10.1.2.3/8) is refused as ambiguous' -r
complete -c relayd -n "__fish_relayd_needs_command" -l user-quota -d 'Concurrent allocations per username' -r
complete -c relayd -n "__fish_relayd_needs_command" -l source-quota -d 'Concurrent allocations, and TCP/TLS connections, per client IPv4 address or IPv6 /64' -r
complete -c relayd -n "__fish_relayd_needs_command" -l total-quota -d 'Concurrent allocations, and TCP/TLS connections, in total' -r
complete -c relayd -n "__fish_relayd_needs_command" -l max-bps -d 'Bandwidth cap per allocation in bytes per second (both directions); 0 for none' -r
complete -c relayd -n "__fish_relayd_needs_command" -l alternate-server -d 'While draining, send new allocations here (300 ALTERNATE-SERVER)' -r
complete -c relayd -n "__fish_relayd_needs_command" -l nonce-lifetime -d 'Seconds a nonce stays valid; an older one gets 438 Stale Nonce, with a fresh nonce to retry with' -r
complete -c relayd -n "__fish_relayd_needs_command" -l drain -d 'At most this many seconds of relaying for live allocations after SIGTERM (relayd exits as soon as the last one ends, at once when there is none)' -r
complete -c relayd -n "__fish_relayd_needs_command" -l metrics -d 'Serve Prometheus metrics over HTTP on this address' -r
complete -c relayd -n "__fish_relayd_needs_command" -l supernode -d 'Authorise this supernode to hand out credentials for this relay, as KEY@HOST:PORT (repeatable). relayd opens a session to it, gives it a secret of its own (rotated hourly) and reports its load; clients then find the relay through the supernode' -r
complete -c relayd -n "__fish_relayd_needs_command" -l identity -d 'This relay\'s key file for --supernode sessions (created on first start, mode 0600; default: $STATE_DIRECTORY/relay.key under systemd, else relay.key in the voxmesh config directory, ~/.config/voxmesh)' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c relayd -n "__fish_relayd_needs_command" -l no-tls -d 'No TLS on bare-ADDR listeners when no --cert is given. Without this flag they serve TLS with a certificate made at start: voxmesh clients on networks that pass only TLS take any certificate (TURN\'s message integrity authenticates the relay to them), while standard TURN clients that verify certificates need --cert'
complete -c relayd -n "__fish_relayd_needs_command" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c relayd -n "__fish_relayd_needs_command" -s q -l quiet -d 'Log only errors'
complete -c relayd -n "__fish_relayd_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relayd -n "__fish_relayd_needs_command" -s V -l version -d 'Print version'
complete -c relayd -n "__fish_relayd_needs_command" -f -a "mint-credential" -d 'Print a time-limited TURN credential minted from the shared secret'
complete -c relayd -n "__fish_relayd_needs_command" -f -a "check" -d 'Test a deployed relay end to end: allocate, permit, echo'
complete -c relayd -n "__fish_relayd_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -l name -d 'The user part of the username (it is not checked against anything)' -r
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -l ttl -d 'Seconds the credential stays valid' -r
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -s q -l quiet -d 'Log only errors'
complete -c relayd -n "__fish_relayd_using_subcommand mint-credential" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relayd -n "__fish_relayd_using_subcommand check" -l user -d 'Long-term credentials to use instead of minting from the secret' -r
complete -c relayd -n "__fish_relayd_using_subcommand check" -l transport -d 'Transport to the relay' -r -f -a "udp\t''
tcp\t''"
complete -c relayd -n "__fish_relayd_using_subcommand check" -l count -d 'Probes to echo' -r
complete -c relayd -n "__fish_relayd_using_subcommand check" -l timeout -d 'Seconds any one step may take' -r
complete -c relayd -n "__fish_relayd_using_subcommand check" -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c relayd -n "__fish_relayd_using_subcommand check" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c relayd -n "__fish_relayd_using_subcommand check" -s q -l quiet -d 'Log only errors'
complete -c relayd -n "__fish_relayd_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c relayd -n "__fish_relayd_using_subcommand help; and not __fish_seen_subcommand_from mint-credential check help" -f -a "mint-credential" -d 'Print a time-limited TURN credential minted from the shared secret'
complete -c relayd -n "__fish_relayd_using_subcommand help; and not __fish_seen_subcommand_from mint-credential check help" -f -a "check" -d 'Test a deployed relay end to end: allocate, permit, echo'
complete -c relayd -n "__fish_relayd_using_subcommand help; and not __fish_seen_subcommand_from mint-credential check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
