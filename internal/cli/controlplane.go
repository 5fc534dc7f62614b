package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// printControlPlaneDetails follows the ControlPlane row of `rakhsh get controlplane` with
// its members and the etcd members, which a row cannot hold.
func printControlPlaneDetails(w io.Writer, objs []object, now time.Time) error {
	for _, o := range objs {
		data, err := json.Marshal(o)
		if err != nil {
			return err
		}
		var cp v1alpha1.ControlPlane
		if err := json.Unmarshal(data, &cp); err != nil {
			return err
		}
		st := cp.Status
		tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "MEMBER\tROLE\tAPI\tVERSION\tAGENT\tAGE")
		for _, m := range st.Members {
			role := "follower"
			switch {
			case m.Leader:
				role = "leader"
			case !m.Controllers:
				role = "api-only"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", m.Name, role, m.APIAddress, m.Version, m.Agent, sinceAge(m.Since, now))
		}
		if st.Leader == nil {
			fmt.Fprintln(tw, "(no leader elected now: a takeover is under way, or no member runs controllers)")
		}
		if st.Store == "etcd" {
			fmt.Fprintln(tw)
			fmt.Fprintln(tw, "ETCD MEMBER\tID\tHEALTHY\tRAFT-LEADER\tVERSION\tDB-SIZE\tCLIENT-URLS")
			for _, e := range st.Etcd {
				size := none
				if e.DBSize > 0 {
					size = v1alpha1.HumanBytes(e.DBSize)
				}
				urls := strings.Join(e.ClientURLs, ",")
				if e.Error != "" {
					urls += " (" + e.Error + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%t\t%t\t%s\t%s\t%s\n", e.Name, e.ID, e.Healthy, e.RaftLeader, orNone(e.Version), size, urls)
			}
			if st.EtcdError != "" {
				fmt.Fprintf(tw, "(etcd members unknown: %s)\n", st.EtcdError)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func sinceAge(t *v1alpha1.Time, now time.Time) string {
	if t == nil {
		return "<unknown>"
	}
	return humanDuration(now.Sub(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}
