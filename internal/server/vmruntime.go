package server

import (
	"github.com/spf13/pflag"

	"github.com/rakhsh/rakhsh/internal/agent"
	"github.com/rakhsh/rakhsh/internal/network"
)

// VMRuntime is how a node agent runs its VMs: the flags of the same names of `rakhsh agent`
// and of serve for its in-process agent.
type VMRuntime struct {
	// NoUpstreamDNS keeps the networks' dnsmasq from forwarding to the host's resolvers.
	NoUpstreamDNS bool
	// Accelerator is how the VMs run guest code: auto, kvm or tcg.
	Accelerator string
	// QEMUUser and DnsmasqUser are the users QEMU and dnsmasq run as.
	QEMUUser, DnsmasqUser string
}

// addVMRuntimeFlags adds --no-upstream-dns, --accelerator, --qemu-user and --dnsmasq-user.
func addVMRuntimeFlags(f *pflag.FlagSet, c *VMRuntime) {
	f.BoolVar(&c.NoUpstreamDNS, "no-upstream-dns", false, "the NAT networks' DNS answers only the names of their VMs and forwards nothing to the host's resolvers")
	f.StringVar(&c.QEMUUser, "qemu-user", agent.DefaultQEMUUser, "user QEMU runs as; created (useradd --system, group kvm) when missing. QEMU then gets its disks, sockets and taps as descriptors and cannot open the data directory; root runs QEMU as root (not recommended)")
	f.StringVar(&c.DnsmasqUser, "dnsmasq-user", network.DefaultDnsmasqUser, "user the networks' dnsmasq drops to after binding; created when missing; root keeps it root")
	f.StringVar(&c.Accelerator, "accelerator", "auto", "how VMs run guest code: auto (KVM when QEMU boots real guest code under it at start, else TCG; a KVM failure of a VM switches the node to TCG), kvm (always, even where it fails) or tcg (software emulation)")
}
