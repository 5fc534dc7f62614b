package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/internal/storage"
)

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The in-process header reader agrees with `qemu-img info` on real files qemu-img made.
func TestReadQCOW2LinkMatchesQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is missing: apt-get install qemu-utils")
	}
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	qemuImg(t, "create", "-f", "qcow2", p("base.qcow2"), "1G")
	qemuImg(t, "create", "-f", "raw", p("base.raw"), "16M")
	qemuImg(t, "create", "-f", "qcow2", "-F", "qcow2", "-b", p("base.qcow2"), p("over.qcow2"))
	qemuImg(t, "create", "-f", "qcow2", "-F", "raw", "-b", "base.raw", p("over-raw.qcow2"))
	qemuImg(t, "create", "-f", "qcow2", "-o", "compat=0.10", "-F", "qcow2", "-b", p("base.qcow2"), p("over-v2.qcow2"))
	qemuImg(t, "create", "-f", "qcow2", "-o", "data_file="+p("data.raw"), p("datafile.qcow2"), "16M")

	for _, tc := range []struct {
		file, backing, format string
		dataFile              bool
	}{
		{"base.qcow2", "", "", false},
		{"over.qcow2", p("base.qcow2"), "qcow2", false},
		{"over-raw.qcow2", "base.raw", "raw", false},
		{"over-v2.qcow2", p("base.qcow2"), "qcow2", false},
		{"datafile.qcow2", "", "", true},
	} {
		l, err := readQCOW2Link(p(tc.file))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if l.BackingFile != tc.backing || l.BackingFormat != tc.format || l.DataFile != tc.dataFile {
			t.Errorf("%s: got %+v, want backing %q format %q dataFile %v", tc.file, *l, tc.backing, tc.format, tc.dataFile)
		}
		info, err := storage.Info(context.Background(), p(tc.file), "qcow2")
		if err != nil {
			t.Fatalf("qemu-img info %s: %v", tc.file, err)
		}
		if info.BackingFile != l.BackingFile || (info.DataFile != "") != l.DataFile {
			t.Errorf("%s: qemu-img says backing %q data file %q, the header reader %+v", tc.file, info.BackingFile, info.DataFile, *l)
		}
	}

	// Not qcow2, and a truncated header.
	if _, err := readQCOW2Link(p("base.raw")); err == nil || !strings.Contains(err.Error(), "not a qcow2 file") {
		t.Errorf("raw file: got %v, want 'not a qcow2 file'", err)
	}
	h, err := os.ReadFile(p("over.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseQCOW2Link(h[:80]); err == nil {
		t.Error("a truncated v3 header was accepted")
	}
}

// A backing file without a recorded format is refused rather than probed.
func TestReadQCOW2LinkNeedsBackingFormat(t *testing.T) {
	dir := t.TempDir()
	base, over := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "o.qcow2")
	qemuImg(t, "create", "-f", "qcow2", base, "1M")
	qemuImg(t, "create", "-f", "qcow2", "-F", "qcow2", "-b", base, over)
	h, err := os.ReadFile(over)
	if err != nil {
		t.Fatal(err)
	}
	// Turn the backing-format extension into an unknown one.
	i := strings.Index(string(h[:4096]), "\xe2\x79\x2a\xca")
	if i < 0 {
		t.Fatal("no backing format extension in a qemu-img overlay")
	}
	h[i] = 0x12
	if _, err := parseQCOW2Link(h[:4096]); err == nil || !strings.Contains(err.Error(), "no backing format") {
		t.Fatalf("got %v, want 'no backing format'", err)
	}
}

func FuzzParseQCOW2Link(f *testing.F) {
	dir := f.TempDir()
	base, over := filepath.Join(dir, "b.qcow2"), filepath.Join(dir, "o.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", base, "1M").CombinedOutput(); err == nil {
		if out, err = exec.Command("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", base, over).CombinedOutput(); err == nil {
			for _, p := range []string{base, over} {
				if h, err := os.ReadFile(p); err == nil {
					f.Add(h[:min(len(h), 4096)])
				}
			}
		} else {
			f.Fatalf("qemu-img: %v\n%s", err, out)
		}
	} else {
		f.Fatalf("qemu-img: %v\n%s", err, out)
	}
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, h []byte) {
		l, err := parseQCOW2Link(h)
		if err != nil {
			return
		}
		if l.BackingFile != "" && l.BackingFormat == "" {
			t.Fatal("a backing file without a format was accepted")
		}
		if len(l.BackingFile) > q2MaxBackingName || len(l.BackingFormat) > q2MaxBackingFmtName {
			t.Fatalf("names beyond their limits: %d, %d", len(l.BackingFile), len(l.BackingFormat))
		}
	})
}
