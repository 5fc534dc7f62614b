package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// adminToken is the admin token the serve wrote to its data dir.
func adminToken(t *testing.T, s *Serve) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.DataDir, "admin.token"))
	if err != nil {
		t.Fatalf("admin token not written: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// guestISOServe starts a serve of its own (vmServe) holding the test guest's ISO as the
// ClusterVirtualImage guest-iso and the blank disks of applyGuestISO; base is the URL the
// guest's files are served from.
func guestISOServe(t *testing.T, disks ...string) (s *Serve, base string) {
	t.Helper()
	dir := vmGuestDir(t)
	s = vmServe(t)
	base = vmImageServer(t, dir)
	applyGuestISO(t, s, base, disks...)
	return s, base
}
