package cli

import (
	"fmt"
	"io"
)

// writeProjectQuota writes a Project's quotas next to what its objects use, one resource a
// line ("-" for no limit), from spec.quota and status.used.
func writeProjectQuota(w io.Writer, obj object) {
	spec, _ := obj["spec"].(map[string]any)
	quota, _ := spec["quota"].(map[string]any)
	st, _ := obj["status"].(map[string]any)
	used, _ := st["used"].(map[string]any)
	fmt.Fprintln(w, "Quota:")
	fmt.Fprintf(w, "  %-16s %-12s %s\n", "RESOURCE", "USED", "HARD")
	for _, r := range []string{"cores", "memory", "disk", "virtualMachines", "images"} {
		u, h := "-", "-"
		if v, ok := used[r]; ok {
			u = cellString(v)
		}
		if v, ok := quota[r]; ok {
			h = cellString(v)
		}
		fmt.Fprintf(w, "  %-16s %-12s %s\n", r, u, h)
	}
}
