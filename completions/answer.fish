complete -c answer -s s -l supernode -d 'A supernode as KEY@HOST:PORT (what `supernoded` prints); repeat for several' -r
complete -c answer -l identity -d 'Identity key file (created on first use, mode 0600); default under $XDG_CONFIG_HOME/voxmesh' -r -F
complete -c answer -l host-cache -d 'Host cache file (supernodes learnt from the mesh); default next to the identity' -r -F
complete -c answer -l contacts -d 'Contacts file (aliases for IDs); default next to the identity' -r -F
complete -c answer -l bind -d 'Local UDP address to use' -r
complete -c answer -l name -d 'Claim this human name (first come, first served)' -r
complete -c answer -l watch -d 'Watch this user\'s presence (ID, contact alias or name); repeat for several' -r
complete -c answer -s v -l verbose -d 'Log more on stderr (-v info, -vv debug, -vvv trace)'
complete -c answer -s q -l quiet -d 'Log only errors'
complete -c answer -s h -l help -d 'Print help (see more with \'--help\')'
complete -c answer -s V -l version -d 'Print version'
