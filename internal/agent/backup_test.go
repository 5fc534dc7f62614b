package agent

import "testing"

func TestBackupJobID(t *testing.T) {
	uid := "0f3a89d1-1bf4-4726-bdf6-582506edf8f4"
	id := backupJobID(3, uid)
	if len(id) > 31 || !isBackupJobID(id, uid) {
		t.Fatalf("%q (%d characters) is not recognised", id, len(id))
	}
	for _, other := range []string{"snap-" + id[4:], "bk-" + id[4:], "bkx-" + id[4:], backupJobID(0, "1f3a89d1-1bf4-4726-bdf6-582506edf8f4"), "bk3"} {
		if isBackupJobID(other, uid) {
			t.Errorf("%q taken for a job of %s", other, uid)
		}
	}
	if a, b := bitmapName("t1", uid), bitmapName("t2", uid); a == b || bitmapPrefix("t1") == bitmapPrefix("t2") {
		t.Errorf("two targets share bitmap names: %s %s", a, b)
	}
}
