# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_supernoded_global_optspecs
    string join \n l/listen= alt-addr= no-rfc5780 no-software metrics= bootstrap= identity= advertise= control= host-cache= config= stun-only cert= key= no-tls session-idle-timeout= max-sessions= v/verbose q/quiet h/help V/version
end

function __fish_supernoded_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_supernoded_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_supernoded_using_subcommand
    set -l cmd (__fish_supernoded_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c supernoded -n "__fish_supernoded_needs_command" -s l -l listen -d 'UDP address to serve on (STUN and the directory); repeat for IPv4 and IPv6' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l alt-addr -d 'Alternate address for RFC 5780, as IP or IP:PORT (port defaults to the listen port + 1); pairs with the --listen address of its family' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l metrics -d 'Serve Prometheus metrics over HTTP on this address' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l bootstrap -d 'Another supernode to join the mesh through, as KEY@HOST:PORT; repeatable' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l identity -d 'This supernode\'s key file (created on first start, mode 0600; default: $STATE_DIRECTORY/supernode.key under systemd, else supernode.key in the voxmesh config directory, ~/.config/voxmesh)' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l advertise -d 'The address other nodes reach us at (default: the first --listen address)' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l control -d 'Control socket for `supernoded status` (default: $RUNTIME_DIRECTORY/supernoded.sock under systemd, else $XDG_RUNTIME_DIR/voxmesh/supernoded.sock, else /tmp/voxmesh-UID/supernoded.sock)' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l host-cache -d 'Host cache of mesh members (read at start, rewritten while running; default: supernode-hosts beside the key file)' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l cert -d 'Certificate chain (PEM, leaf first) for TLS on the directory\'s TCP port, which serves plain and TLS streams alike (told apart by the first byte) for clients whose network passes only TLS. Default: a self-signed certificate made at start; clients take any certificate, since the session inside authenticates this supernode\'s key (TLS is only a disguise here), so give one only to look like an ordinary web server' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l key -d 'Private key (PEM) for --cert' -r -F
complete -c supernoded -n "__fish_supernoded_needs_command" -l session-idle-timeout -d 'Benchmarks only: close a session after this many seconds without a frame (default 65). `scripts/bench-supernode` raises it so that a million clients that registered and went quiet stay registered while it measures memory' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l max-sessions -d 'Benchmarks only: most sessions in any state (default 100000)' -r
complete -c supernoded -n "__fish_supernoded_needs_command" -l no-rfc5780 -d 'Serve plain STUN only: no CHANGE-REQUEST, RESPONSE-PORT, PADDING or OTHER-ADDRESS'
complete -c supernoded -n "__fish_supernoded_needs_command" -l no-software -d 'Leave the SOFTWARE attribute out of responses (saves 28 bytes each)'
complete -c supernoded -n "__fish_supernoded_needs_command" -l stun-only -d 'Serve STUN only: no identity, no mesh, no directory'
complete -c supernoded -n "__fish_supernoded_needs_command" -l no-tls -d 'No TLS on the TCP port: plain streams only'
complete -c supernoded -n "__fish_supernoded_needs_command" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c supernoded -n "__fish_supernoded_needs_command" -s q -l quiet -d 'Log only errors'
complete -c supernoded -n "__fish_supernoded_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c supernoded -n "__fish_supernoded_needs_command" -s V -l version -d 'Print version'
complete -c supernoded -n "__fish_supernoded_needs_command" -f -a "status" -d 'Show the running daemon\'s members, users, relays and load'
complete -c supernoded -n "__fish_supernoded_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -l control -d 'The daemon\'s control socket (default: the daemon\'s --control, from the command line, SUPERNODED_CONTROL or --config; else the daemon\'s default, and failing that /run/supernoded/supernoded.sock, where the systemd unit puts it)' -r -F
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -l config -d 'Read flags from this TOML file (keys are the long flag names; see Configuration below)' -r -F
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -l json -d 'Print one JSON object instead of a summary'
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -l users -d 'Include the IDs of the users homed on this supernode'
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -s q -l quiet -d 'Log only errors'
complete -c supernoded -n "__fish_supernoded_using_subcommand status" -s h -l help -d 'Print help'
complete -c supernoded -n "__fish_supernoded_using_subcommand help; and not __fish_seen_subcommand_from status help" -f -a "status" -d 'Show the running daemon\'s members, users, relays and load'
complete -c supernoded -n "__fish_supernoded_using_subcommand help; and not __fish_seen_subcommand_from status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
