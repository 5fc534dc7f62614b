package v1alpha1

// ClusterNetwork is a Rakhsh network VMs attach to (Deckhouse has no such kind): a NAT network
// behind a Rakhsh-managed bridge with its own subnet, DHCP and masquerading, or a bridge into
// an existing host bridge on the operator's LAN. The network named "main"
// (DefaultClusterNetworkName) is the one a VM's Main interface uses.
type ClusterNetwork struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`
	Spec       ClusterNetworkSpec   `json:"spec"`
	Status     ClusterNetworkStatus `json:"status,omitempty"`
}

// DefaultClusterNetworkName is the ClusterNetwork of a VM's Main interface and the default
// network of a VirtualMachineIPAddress.
const DefaultClusterNetworkName = "main"

// ClusterNetworkType is NAT or Bridge.
type ClusterNetworkType string

// ClusterNetworkType values.
const (
	// ClusterNetworkTypeNAT: Rakhsh creates the bridge on every host, gives it the gateway
	// address, runs DHCP and masquerades traffic out of the uplink.
	ClusterNetworkTypeNAT ClusterNetworkType = "NAT"
	// ClusterNetworkTypeBridge: VMs join an existing host bridge; addressing is the LAN's
	// (Rakhsh serves DHCP only when dhcp.mode is dnsmasq).
	ClusterNetworkTypeBridge ClusterNetworkType = "Bridge"
)

// DHCPMode says who answers DHCP on the network.
type DHCPMode string

// DHCPMode values.
const (
	DHCPModeDnsmasq DHCPMode = "dnsmasq"
	DHCPModeNone    DHCPMode = "none"
)

// Defaults and limits of a ClusterNetwork.
const (
	ClusterNetworkDefaultMTU   = 1500
	ClusterNetworkMinMTU       = 576
	ClusterNetworkMaxMTU       = 9000
	ClusterNetworkBridgePrefix = "rk-"
	// ClusterNetworkDefaultLeaseTime is the DHCP lease time when dhcp.mode is dnsmasq.
	ClusterNetworkDefaultLeaseTime = "1h"
)

// ClusterNetworkSpec is the desired network. Type, subnet and bridge are immutable.
type ClusterNetworkSpec struct {
	// Type is NAT or Bridge (required).
	Type ClusterNetworkType `json:"type"`
	// Bridge is the host bridge interface (Linux interface name rules: at most 15 characters
	// of letters, digits, '_', '.' and '-'). Required for Bridge; for NAT it defaults to
	// "rk-" + the network name, cut to 15 characters.
	Bridge string `json:"bridge,omitempty"`
	// Subnet is the IPv4 network in CIDR form, e.g. "10.66.0.0/24", prefix /8../30. Required
	// for NAT; optional for Bridge (then Rakhsh allocates addresses only when it is given).
	Subnet string `json:"subnet,omitempty"`
	// Gateway is the router address inside Subnet. For NAT it defaults to the first host of
	// the subnet and is put on the bridge; for Bridge it is the LAN's router, announced by DHCP.
	Gateway string              `json:"gateway,omitempty"`
	DHCP    *ClusterNetworkDHCP `json:"dhcp,omitempty"`
	DNS     *ClusterNetworkDNS  `json:"dns,omitempty"`
	// MTU of the bridge and the VMs' interfaces, 576..9000, default 1500.
	MTU int `json:"mtu,omitempty"`
	// Uplink is the host interface NAT traffic leaves by (NAT only). Empty means the
	// interface of the host's default route, found on each host.
	Uplink string `json:"uplink,omitempty"`
	// NAT holds the outbound policy of a NAT network (Rakhsh addition).
	NAT *ClusterNetworkNAT `json:"nat,omitempty"`
	// NodeSelector (Bridge only) names, by their labels, the nodes that have the bridge: a
	// VM with an interface on the network is scheduled only on a node whose labels match.
	// Empty: every node. A NAT network spans every node and has none (Rakhsh addition).
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

// ClusterNetworkNAT is what guests of a NAT network may reach through the host. Link-local
// addresses (169.254.0.0/16, with the cloud metadata service 169.254.169.254) are always
// denied.
type ClusterNetworkNAT struct {
	// DenyDestinations are IPv4 ranges (CIDR) the host does not route guests' packets to,
	// e.g. the host's LAN or all private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16).
	// Guests get an ICMP "administratively prohibited" answer.
	DenyDestinations []string `json:"denyDestinations,omitempty"`
}

// ClusterNetworkDHCP configures address assignment.
type ClusterNetworkDHCP struct {
	// Mode is dnsmasq (default for NAT) or none (default for Bridge). dnsmasq needs a subnet.
	Mode DHCPMode `json:"mode,omitempty"`
	// RangeStart and RangeEnd bound the addresses Rakhsh hands out to Auto
	// VirtualMachineIPAddresses (both or neither; inside the subnet; the gateway outside the
	// range). Unset means every host address of the subnet except the gateway.
	RangeStart string `json:"rangeStart,omitempty"`
	RangeEnd   string `json:"rangeEnd,omitempty"`
	// LeaseTime is the DHCP lease time as a Go duration (at least 2m), default "1h"; only
	// with mode dnsmasq.
	LeaseTime string `json:"leaseTime,omitempty"`
}

// ClusterNetworkDNS lists the resolvers DHCP announces. Unset on a NAT network means the
// gateway, where dnsmasq forwards to the host's resolvers.
type ClusterNetworkDNS struct {
	Servers []string `json:"servers,omitempty"`
}

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// ClusterNetworkPhase is the phase of a network.
type ClusterNetworkPhase string

// ClusterNetworkPhase values.
const (
	ClusterNetworkPhasePending ClusterNetworkPhase = "Pending"
	ClusterNetworkPhaseReady   ClusterNetworkPhase = "Ready"
	ClusterNetworkPhaseFailed  ClusterNetworkPhase = "Failed"
)

// ClusterNetwork condition types.
const (
	// ClusterNetworkConditionReady is True when every host has the bridge, DHCP and firewall
	// rules in place.
	ClusterNetworkConditionReady = "Ready"
)

// ClusterNetworkStatus is the observed state of a network.
type ClusterNetworkStatus struct {
	Phase ClusterNetworkPhase `json:"phase,omitempty"`
	// AllocatedIPs counts the IP leases taken in the subnet.
	AllocatedIPs int `json:"allocatedIPs,omitempty"`
	// VNI is the VXLAN network identifier of a NAT network, 1..16777215: the network
	// controller gives each NAT network the lowest one no other network holds and never
	// changes it afterwards. The node agents join the network's bridges on every node
	// through a VXLAN device with this identifier (docs/networking.md, "Networks across
	// hosts"). Bridge networks have none.
	VNI                int         `json:"vni,omitempty"`
	Conditions         []Condition `json:"conditions,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
}
