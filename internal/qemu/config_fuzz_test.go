package qemu

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzBuild decodes an Input (VM object, node facts, disks, NICs, paths) from JSON and builds
// it. Build must never panic, must be deterministic, and every configuration it accepts must
// satisfy checkInvariants: an explicit format on every block node (no probing), devices only
// on format nodes, qcow2 backing chains explicit, socket paths that survive QEMU's option
// parsing. The seed corpus in testdata/fuzz/FuzzBuild holds every golden case (rewritten by
// -update) plus hand-written edge cases.
func FuzzBuild(f *testing.F) {
	for _, c := range configCases {
		b, err := json.Marshal(c.input(goldenEnv(c)))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in Input
		if err := json.Unmarshal(data, &in); err != nil {
			return
		}
		cfg, err := Build(in)
		if err != nil {
			if len(cfg.Args) != 0 {
				t.Fatalf("error %v with arguments %q", err, cfg.Args)
			}
			return
		}
		var again Input
		if err := json.Unmarshal(data, &again); err != nil {
			t.Fatal(err)
		}
		cfg2, err := Build(again)
		if err != nil || !reflect.DeepEqual(cfg, cfg2) {
			t.Fatalf("not deterministic: %v", err)
		}
		checkInvariants(t, in, cfg)
	})
}
