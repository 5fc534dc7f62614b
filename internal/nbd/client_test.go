package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qemuNBD exports the qcow2 file img read-only on a unix socket as export "disk", with the
// dirty bitmap named (""; none), until the test ends.
func qemuNBD(t *testing.T, img, bitmap string) string {
	t.Helper()
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Skip("qemu-nbd is not installed (install qemu-utils)")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := []string{"--socket=" + sock, "--format=qcow2", "--read-only", "--export-name=disk", "--persistent", "--shared=4"}
	if bitmap != "" {
		args = append(args, "--bitmap="+bitmap)
	}
	cmd := exec.Command("qemu-nbd", append(args, img)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// The socket file is there from bind(), before qemu-nbd listens: it is ready once a
	// connection is taken (--persistent: a probe that hangs up does not end it).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen: %s", stderr.String())
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// TestAgainstQEMUNBD: against qemu-nbd, the client reads a qcow2 disk's data (holes as
// zeros), reports where data is (base:allocation) and which blocks a dirty bitmap marks
// (qemu:dirty-bitmap:NAME), and refuses what it was not asked for or the export lacks.
func TestAgainstQEMUNBD(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io is not installed (install qemu-utils)")
	}
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0x33 1M 128k", img)
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 2M 64k", img)
	want := make([]byte, 4<<20)
	copy(want, bytes.Repeat([]byte{0x5a}, 64<<10))
	copy(want[1<<20:], bytes.Repeat([]byte{0x33}, 128<<10))
	copy(want[2<<20:], bytes.Repeat([]byte{0x77}, 64<<10))

	sock := qemuNBD(t, img, "b0")
	c, err := Dial("unix", sock, "disk", []string{"base:allocation", "qemu:dirty-bitmap:b0"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 4<<20 {
		t.Fatalf("size %d", c.Size())
	}
	got := make([]byte, 4<<20)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the data read differs from what was written")
	}
	part := make([]byte, 100)
	if _, err := c.ReadAt(part, 1<<20+64<<10-50); err != nil || !bytes.Equal(part, want[1<<20+64<<10-50:1<<20+64<<10+50]) {
		t.Errorf("a read across an allocation boundary: %v", err)
	}

	data := func(ex []Extent) (n int64) {
		for _, e := range ex {
			if e.Flags&StateHole == 0 {
				n += e.Length
			}
		}
		return n
	}
	alloc, err := c.Extents("base:allocation")
	if err != nil {
		t.Fatal(err)
	}
	if n := data(alloc); n < 256<<10 || n > 1<<20 {
		t.Errorf("base:allocation: %d bytes of data (%+v)", n, alloc)
	}
	dirty, err := c.Extents("qemu:dirty-bitmap:b0")
	if err != nil {
		t.Fatal(err)
	}
	var marked []Extent
	for _, e := range dirty {
		if e.Flags&StateDirty != 0 {
			marked = append(marked, e)
		}
	}
	if len(marked) != 1 || marked[0].Offset != 2<<20 || marked[0].Length != 64<<10 {
		t.Errorf("dirty extents %+v, want 2 MiB + 64 KiB only", marked)
	}

	if _, err := c.BlockStatus("qemu:dirty-bitmap:other", 0, 1<<20); err == nil {
		t.Error("block status of a context not asked for")
	}
	if _, err := c.ReadAt(part, 4<<20-50); err == nil {
		t.Error("a read beyond the end")
	}
	if _, err := Dial("unix", sock, "nosuch", nil, 10*time.Second); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("dial of an export that is not there: %v", err)
	}
	if _, err := Dial("unix", sock, "disk", []string{"qemu:dirty-bitmap:b1"}, 10*time.Second); err == nil {
		t.Error("dial asking for a bitmap the export lacks")
	}
}

// TestNotNBD: a server that does not greet as an NBD server is refused, and an error chunk's
// code and message reach the caller.
func TestNotNBD(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.2 hello there\r\n"))
			time.Sleep(100 * time.Millisecond)
			c.Close()
		}
	}()
	if _, err := Dial("unix", sock, "disk", nil, 5*time.Second); err == nil || !strings.Contains(err.Error(), "not an NBD server") {
		t.Errorf("dial of a server that is not NBD: %v", err)
	}
	p := binary.BigEndian.AppendUint32(nil, 5)
	p = binary.BigEndian.AppendUint16(p, 9)
	p = append(p, "I/O error"...)
	if err := chunkError(p); err == nil || !strings.Contains(err.Error(), "error 5: I/O error") {
		t.Errorf("an error chunk: %v", err)
	}
	if err := chunkError([]byte{1}); err == nil {
		t.Error("a short error chunk was no error")
	}
}

// FuzzHandshake: whatever a server sends, Dial returns (an error or a connection) without
// panicking or reading beyond its limits.
func FuzzHandshake(f *testing.F) {
	hello := binary.BigEndian.AppendUint64(nil, magicNBD)
	hello = binary.BigEndian.AppendUint64(hello, magicOpt)
	hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle|flagNoZeroes)
	ack := binary.BigEndian.AppendUint64(nil, magicOptReply)
	ack = binary.BigEndian.AppendUint32(ack, optStructuredReply)
	ack = binary.BigEndian.AppendUint32(ack, repAck)
	ack = binary.BigEndian.AppendUint32(ack, 0)
	f.Add(hello)
	f.Add(append(append([]byte{}, hello...), ack...))
	f.Add([]byte("NBDMAGIC"))
	f.Fuzz(func(t *testing.T, server []byte) {
		dir := t.TempDir()
		sock := filepath.Join(dir, "s")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Skip(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c) }()
			_, _ = c.Write(server)
			c.Close()
		}()
		if c, err := Dial("unix", sock, "disk", []string{"base:allocation"}, 2*time.Second); err == nil {
			c.Close()
		}
	})
}

// TestReadChunks: a read's reply chunks must cover the buffer in order; holes are cleared in
// a buffer that held other data; a reply that breaks the rule fails the read and leaves the
// connection usable.
func TestReadChunks(t *testing.T) {
	type chunk struct {
		hole    bool
		at, n   int
		payload byte
	}
	data := func(at, n int, b byte) chunk { return chunk{at: at, n: n, payload: b} }
	hole := func(at, n int) chunk { return chunk{hole: true, at: at, n: n} }
	cases := []struct {
		name   string
		chunks []chunk
		ok     bool
	}{
		{"data then hole", []chunk{data(0, 6, 0xaa), hole(6, 10)}, true},
		{"a gap", []chunk{data(0, 6, 0xaa), hole(8, 8)}, false},
		{"an overlap", []chunk{data(0, 8, 0xaa), data(6, 10, 0xbb)}, false},
		{"out of order", []chunk{hole(6, 10), data(0, 6, 0xaa)}, false},
		{"short", []chunk{data(0, 6, 0xaa)}, false},
		{"beyond", []chunk{data(0, 6, 0xaa), hole(6, 12)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			c := &Conn{c: client, size: 1 << 20, contexts: map[string]uint32{}}
			go func() {
				defer server.Close()
				req := make([]byte, 28)
				for {
					if _, err := io.ReadFull(server, req); err != nil {
						return
					}
					cookie, off := binary.BigEndian.Uint64(req[8:]), binary.BigEndian.Uint64(req[16:])
					for i, ch := range tc.chunks {
						typ, p := uint16(replyOffsetData), binary.BigEndian.AppendUint64(nil, off+uint64(ch.at))
						if ch.hole {
							typ, p = replyOffsetHole, binary.BigEndian.AppendUint32(p, uint32(ch.n))
						} else {
							p = append(p, bytes.Repeat([]byte{ch.payload}, ch.n)...)
						}
						var h []byte
						h = binary.BigEndian.AppendUint32(h, magicStructured)
						flags := uint16(0)
						if i == len(tc.chunks)-1 {
							flags = replyFlagDone
						}
						h = binary.BigEndian.AppendUint16(h, flags)
						h = binary.BigEndian.AppendUint16(h, typ)
						h = binary.BigEndian.AppendUint64(h, cookie)
						h = binary.BigEndian.AppendUint32(h, uint32(len(p)))
						if _, err := server.Write(append(h, p...)); err != nil {
							return
						}
					}
				}
			}()
			for round := range 2 { // the connection goes on after a failed read
				p := bytes.Repeat([]byte{0xee}, 16)
				_, err := c.ReadAt(p, 4096)
				if tc.ok {
					want := append(bytes.Repeat([]byte{0xaa}, 6), make([]byte, 10)...)
					if err != nil || !bytes.Equal(p, want) {
						t.Fatalf("round %d: %v, read %x", round, err, p)
					}
				} else if err == nil {
					t.Fatalf("round %d: the read succeeded: %x", round, p)
				} else if c.broken != nil {
					t.Fatalf("round %d: the connection broke: %v", round, c.broken)
				}
			}
		})
	}
}
