package network

import (
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

func vniNet(name string, typ v1alpha1.ClusterNetworkType, at int, vni int) v1alpha1.ClusterNetwork {
	t := v1alpha1.NewTime(time.Date(2026, 1, 1, 0, 0, at, 0, time.UTC))
	return v1alpha1.ClusterNetwork{ObjectMeta: v1alpha1.ObjectMeta{Name: name, CreationTimestamp: &t},
		Spec: v1alpha1.ClusterNetworkSpec{Type: typ}, Status: v1alpha1.ClusterNetworkStatus{VNI: vni}}
}

func TestAssignVNIs(t *testing.T) {
	nat, br := v1alpha1.ClusterNetworkTypeNAT, v1alpha1.ClusterNetworkTypeBridge
	cases := []struct {
		name string
		nets []v1alpha1.ClusterNetwork
		want map[string]int
	}{
		{"new networks get the lowest free identifiers in creation order",
			[]v1alpha1.ClusterNetwork{vniNet("b", nat, 2, 0), vniNet("a", nat, 1, 0), vniNet("lan", br, 0, 0)},
			map[string]int{"a": 1, "b": 2, "lan": 0}},
		{"held identifiers stay; a new network skips them",
			[]v1alpha1.ClusterNetwork{vniNet("main", nat, 1, 1), vniNet("x", nat, 2, 3), vniNet("y", nat, 3, 0), vniNet("z", nat, 4, 0)},
			map[string]int{"main": 1, "x": 3, "y": 2, "z": 4}},
		{"a duplicate goes to the younger network, which gets a free one",
			[]v1alpha1.ClusterNetwork{vniNet("young", nat, 5, 7), vniNet("old", nat, 1, 7), vniNet("other", nat, 2, 1)},
			map[string]int{"old": 7, "other": 1, "young": 2}},
		{"same creation time: the name decides",
			[]v1alpha1.ClusterNetwork{vniNet("n2", nat, 1, 4), vniNet("n1", nat, 1, 4)},
			map[string]int{"n1": 4, "n2": 1}},
		{"a bridge network never holds one, an out-of-range one is replaced",
			[]v1alpha1.ClusterNetwork{vniNet("lan", br, 1, 9), vniNet("bad", nat, 2, v1alpha1.MaxVNI+1)},
			map[string]int{"lan": 0, "bad": 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := assignVNIs(c.nets)
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s: VNI %d, want %d (all: %v)", k, got[k], v, got)
				}
			}
			if len(got) != len(c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
			// Stable: applying the result and assigning again changes nothing.
			again := append([]v1alpha1.ClusterNetwork(nil), c.nets...)
			for i := range again {
				again[i].Status.VNI = got[again[i].Name]
			}
			if second := assignVNIs(again); len(second) != len(got) {
				t.Fatalf("second pass %v", second)
			} else {
				for k, v := range got {
					if second[k] != v {
						t.Errorf("second pass moved %s from %d to %d", k, v, second[k])
					}
				}
			}
		})
	}
}
