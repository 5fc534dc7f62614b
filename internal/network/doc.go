// Package network makes a host's networking match the ClusterNetworks its VMs use.
//
// For a NAT network it keeps a Linux bridge holding the gateway address, an nftables table
// of its own (masquerade to the uplink, forward filtering, port forwards) and a dnsmasq that
// serves DHCP (one static host entry per VM NIC: MAC → IP) and DNS. For a Bridge network it
// only adds the VMs' taps to the operator's existing bridge (and runs dnsmasq on it when the
// network asks for DHCP). Every VM tap gets anti-spoofing rules in a bridge-family table:
// only the VM's MAC and leased IPs may leave it.
//
// A NAT network that spans hosts (Desired.Overlay, overlay.go) also gets a VXLAN device on its
// bridge, with no learning: its forwarding table (a flood entry per other node, an entry per
// VM MAC on another node) is written from the store by the agent. The same gateway address
// and MAC are on every node's bridge, and bridge-family rules keep the gateway's frames, ARP
// for it and DHCP off the overlay, so each node serves and NATs its own VMs.
//
// Everything is idempotent: Ensure may run any number of times and repairs what drifted
// (a deleted bridge, a flushed ruleset, a killed dnsmasq). dnsmasq runs detached from the
// process that started it, with its pid file and configuration under the data directory,
// so a restart of `rakhsh serve` re-adopts it by pid and running VMs keep connectivity.
//
// Links are managed over netlink (github.com/vishvananda/netlink); nftables rules are
// generated as text and applied with `nft -f`, one transaction per network, so a ruleset is
// replaced atomically and never seen half-written.
package network
