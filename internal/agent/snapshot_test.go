package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// fakeSnapMon answers the QMP commands of a live snapshot and records them.
type fakeSnapMon struct {
	path    string // the disk file QEMU has open
	calls   []string
	args    map[string]any // the last arguments of each command
	txErr   error
	jobErr  string
	polls   int // query-jobs answers "running" this many times before "concluded"
	started bool
}

func (f *fakeSnapMon) Execute(ctx context.Context, cmd string, args, result any) error {
	f.calls = append(f.calls, cmd)
	if f.args == nil {
		f.args = map[string]any{}
	}
	f.args[cmd] = args
	var reply any
	switch cmd {
	case "query-named-block-nodes":
		reply = []map[string]any{
			{"node-name": "drive-root-file", "file": f.path, "drv": "file", "ro": false},
			{"node-name": "drive-root", "file": f.path, "drv": "qcow2", "ro": false},
		}
	case "query-fdsets":
		reply = []any{}
	case "transaction":
		if f.txErr != nil {
			return f.txErr
		}
		f.started = true
	case "query-jobs":
		if !f.started {
			reply = []any{}
			break
		}
		status := "concluded"
		if f.polls > 0 {
			f.polls--
			status = "running"
		}
		j := map[string]any{"id": "snap-1", "status": status}
		if status == "concluded" && f.jobErr != "" {
			j["error"] = f.jobErr
		}
		reply = []any{j}
	}
	if result != nil && reply != nil {
		b, _ := json.Marshal(reply)
		return json.Unmarshal(b, result)
	}
	return nil
}

func (f *fakeSnapMon) AddFD(ctx context.Context, file *os.File, set int, opaque string) (qmp.AddFDInfo, error) {
	f.calls = append(f.calls, "add-fd")
	return qmp.AddFDInfo{FDSetID: 7, FD: 30}, nil
}

type fakeFreezer struct {
	calls     *[]string
	freezeErr error
}

func (z fakeFreezer) freeze(context.Context) (int, error) {
	*z.calls = append(*z.calls, "FREEZE")
	if z.freezeErr != nil {
		return 0, z.freezeErr
	}
	return 1, nil
}

func (z fakeFreezer) thaw(context.Context) (int, error) {
	*z.calls = append(*z.calls, "THAW")
	return 1, nil
}

func needQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (install qemu-utils)")
	}
}

// TestTakeLiveSequence: the target is added, the guest frozen only around the transaction
// that starts the copy, the job waited for and dismissed, the target removed from QEMU.
func TestTakeLiveSequence(t *testing.T) {
	needQemuImg(t)
	snapshotPoll = 0
	dir := t.TempDir()
	mon := &fakeSnapMon{path: "/data/disk.qcow2", polls: 2}
	fz := fakeFreezer{calls: &mon.calls}
	target := filepath.Join(dir, "s.qcow2.part")
	res, err := takeLive(context.Background(), mon, fz, []snapDisk{{path: mon.path, target: target, size: 1 << 20, id: "snap-1"}}, true)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(mon.calls, " ")
	want := "query-named-block-nodes query-fdsets add-fd blockdev-add FREEZE transaction THAW query-jobs query-jobs query-jobs job-dismiss blockdev-del remove-fd"
	if got != want {
		t.Errorf("calls\n got %s\nwant %s", got, want)
	}
	if !res.frozen || res.frozenFor <= 0 {
		t.Errorf("result %+v", res)
	}
	tx, _ := json.Marshal(mon.args["transaction"])
	if !strings.Contains(string(tx), `"device":"drive-root"`) || !strings.Contains(string(tx), `"sync":"full"`) || !strings.Contains(string(tx), `"target":"snap-1"`) {
		t.Errorf("transaction %s", tx)
	}
	add, _ := json.Marshal(mon.args["blockdev-add"])
	if !strings.Contains(string(add), `/dev/fdset/7`) {
		t.Errorf("blockdev-add %s", add)
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("the target file: %v", err)
	}
}

// TestTakeLiveUndo: a guest that cannot be frozen fails a snapshot that requires consistency
// before any copy starts, and a failed copy job fails the snapshot; either way QEMU is left
// as it was and the target file is removed. Without required consistency the copy goes on
// unfrozen.
func TestTakeLiveUndo(t *testing.T) {
	needQemuImg(t)
	snapshotPoll = 0
	cases := []struct {
		name      string
		mon       *fakeSnapMon
		freezeErr error
		required  bool
		ok        bool
		want      string
	}{
		{"freeze fails, consistency required", &fakeSnapMon{}, errors.New("no agent"), true, false,
			"query-named-block-nodes query-fdsets add-fd blockdev-add FREEZE blockdev-del remove-fd"},
		{"freeze fails, not required", &fakeSnapMon{}, errors.New("no agent"), false, true,
			"query-named-block-nodes query-fdsets add-fd blockdev-add FREEZE transaction query-jobs job-dismiss blockdev-del remove-fd"},
		{"transaction refused: thawed all the same", &fakeSnapMon{txErr: errors.New("busy")}, nil, true, false,
			"query-named-block-nodes query-fdsets add-fd blockdev-add FREEZE transaction THAW blockdev-del remove-fd"},
		{"the copy fails", &fakeSnapMon{jobErr: "No space left on device"}, nil, true, false,
			"query-named-block-nodes query-fdsets add-fd blockdev-add FREEZE transaction THAW query-jobs job-dismiss blockdev-del remove-fd"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "s.qcow2.part")
			c.mon.path = "/data/disk.qcow2"
			_, err := takeLive(context.Background(), c.mon, fakeFreezer{calls: &c.mon.calls, freezeErr: c.freezeErr},
				[]snapDisk{{path: c.mon.path, target: target, size: 1 << 20, id: "snap-1"}}, c.required)
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok=%v", err, c.ok)
			}
			if got := strings.Join(c.mon.calls, " "); got != c.want {
				t.Errorf("calls\n got %s\nwant %s", got, c.want)
			}
			_, serr := os.Stat(target)
			if c.ok != (serr == nil) {
				t.Errorf("target file after ok=%v: %v", c.ok, serr)
			}
		})
	}
}

// TestTakeLiveDiskNotOpen: a disk the running QEMU does not have open fails at once.
func TestTakeLiveDiskNotOpen(t *testing.T) {
	mon := &fakeSnapMon{path: "/data/other.qcow2"}
	_, err := takeLive(context.Background(), mon, nil, []snapDisk{{path: "/data/disk.qcow2", target: filepath.Join(t.TempDir(), "x"), size: 1 << 20, id: "snap-1"}}, false)
	if err == nil || !strings.Contains(err.Error(), "does not have the disk") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(strings.Join(mon.calls, " "), "add-fd") {
		t.Errorf("calls %v", mon.calls)
	}
}

func TestSnapshotJobID(t *testing.T) {
	id := snapshotJobID("0123abcd-4567-89ab-cdef-0123456789ab")
	if id != "snap-0123abcd456789abcdef" || len(id) > 31 {
		t.Errorf("id %q", id)
	}
}
