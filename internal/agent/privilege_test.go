package agent_test

import (
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/agent"
)

// requireQEMUUser fails unless pid runs with every uid of agent.DefaultQEMUUser (not root).
func requireQEMUUser(t *testing.T, pid int) {
	t.Helper()
	u, err := user.Lookup(agent.DefaultQEMUUser)
	if err != nil || u.Uid == "0" {
		t.Fatalf("user %s: %+v %v", agent.DefaultQEMUUser, u, err)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatalf("QEMU pid %d: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[0] == "Uid:" {
			for _, id := range f[1:] {
				if id != u.Uid {
					t.Fatalf("QEMU (pid %d) runs with %s, want all %s (%s)", pid, l, u.Uid, agent.DefaultQEMUUser)
				}
			}
			return
		}
	}
	t.Fatalf("no Uid line for pid %d", pid)
}
