package network

import (
	"sort"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// assignVNIs returns the VXLAN network identifier every NAT network should hold (by name).
// A network keeps the VNI its status already has; one without, or one whose VNI an older
// network (earlier creation, then name) also holds, gets the lowest VNI no network holds.
// Bridge networks get none (0). The result depends only on the networks, so two
// controllers that see the same networks write the same identifiers.
func assignVNIs(nets []v1alpha1.ClusterNetwork) map[string]int {
	sorted := append([]v1alpha1.ClusterNetwork(nil), nets...)
	sort.Slice(sorted, func(i, j int) bool {
		a, b := created(&sorted[i]), created(&sorted[j])
		if !a.Equal(b) {
			return a.Before(b)
		}
		return sorted[i].Name < sorted[j].Name
	})
	held := map[int]bool{} // every identifier some network's status names
	for _, n := range sorted {
		if v := n.Status.VNI; v > 0 && v <= v1alpha1.MaxVNI {
			held[v] = true
		}
	}
	kept := map[int]bool{}
	out := map[string]int{}
	next := 1
	for _, n := range sorted {
		if n.Spec.Type != v1alpha1.ClusterNetworkTypeNAT {
			out[n.Name] = 0
			continue
		}
		if v := n.Status.VNI; v > 0 && v <= v1alpha1.MaxVNI && !kept[v] {
			kept[v] = true
			out[n.Name] = v
			continue
		}
		for next <= v1alpha1.MaxVNI && (held[next] || kept[next]) {
			next++
		}
		if next > v1alpha1.MaxVNI {
			out[n.Name] = 0 // every identifier is taken: the network stays on its hosts
			continue
		}
		kept[next] = true
		out[n.Name] = next
		next++
	}
	return out
}

func created(n *v1alpha1.ClusterNetwork) time.Time {
	if n.CreationTimestamp == nil {
		return time.Time{}
	}
	return n.CreationTimestamp.Time
}
