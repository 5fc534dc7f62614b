package agent

import (
	"context"
	"encoding/json"
	"os"
	"testing"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

// queryMon is a fake QEMU monitor: it answers the command query with answer (through JSON,
// as QEMU's reply would be decoded) and records the arguments of each call of the command
// record.
type queryMon struct {
	query, record string
	answer        any
	calls         []map[string]any
}

func (f *queryMon) Execute(_ context.Context, cmd string, args, result any) error {
	switch cmd {
	case f.query:
		b, _ := json.Marshal(f.answer)
		return json.Unmarshal(b, result)
	case f.record:
		f.calls = append(f.calls, args.(map[string]any))
	}
	return nil
}

func (f *queryMon) AddFD(context.Context, *os.File, int, string) (qmp.AddFDInfo, error) {
	return qmp.AddFDInfo{}, nil
}

// TestGrowInVM: block_resize goes to the writable qcow2 node of the disk file (also when QEMU
// reports a json: file name), never to its read-only backing layers or other disks, and not
// at all when the node is already large enough.
func TestGrowInVM(t *testing.T) {
	const path = "/data/pools/default/disks/u.qcow2"
	node := func(name, file, drv string, ro bool, size int64) blockNode {
		n := blockNode{NodeName: name, File: file, Driver: drv, ReadOnly: ro}
		n.Image.VirtualSize = size
		return n
	}
	f := &queryMon{query: "query-named-block-nodes", record: "block_resize", answer: []blockNode{
		node("fmt-other", "/data/pools/default/disks/other.qcow2", "qcow2", false, 1<<20),
		node("file-vd", path, "file", false, 1<<20),
		node("fmt-vd.b1", "/data/images/img", "qcow2", true, 1<<20),
		node("fmt-vd", `json:{"backing": {"file": "/data/images/img"}, "driver": "qcow2", "file": {"driver": "file", "filename": "`+path+`"}}`, "qcow2", false, 1<<20),
	}}
	if err := growInVM(context.Background(), f, path, 2<<20); err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 1 || f.calls[0]["node-name"] != "fmt-vd" || f.calls[0]["size"] != int64(2<<20) {
		t.Fatalf("block_resize calls: %+v", f.calls)
	}
	f.calls = nil
	if err := growInVM(context.Background(), f, path, 1<<20); err != nil || len(f.calls) != 0 {
		t.Fatalf("already large enough: %v %+v", err, f.calls)
	}
}
