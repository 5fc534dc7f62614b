package images

import (
	"bytes"
	"testing"
)

// FuzzDetectFormat: detection never panics, is deterministic, only looks at the first
// HeaderSize bytes, and the qcow2 header check never panics and refuses non-qcow2 input.
func FuzzDetectFormat(f *testing.F) {
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Add([]byte("KDMV"))
	f.Add([]byte{})
	iso := make([]byte, 0x8010)
	copy(iso[0x8001:], "CD001")
	f.Add(iso)
	f.Fuzz(func(t *testing.T, data []byte) {
		got := DetectFormat(data)
		if again := DetectFormat(bytes.Clone(data)); again != got {
			t.Fatalf("not deterministic: %s then %s", got, again)
		}
		if len(data) > HeaderSize && DetectFormat(data[:HeaderSize]) != got {
			t.Fatal("detection looked beyond HeaderSize")
		}
		if got == FormatQCOW2 && !bytes.HasPrefix(data, []byte("QFI\xfb")) {
			t.Fatal("qcow2 without its magic")
		}
		_ = CheckSupported(got)
		hd, err := CheckQCOW2Header(data)
		if err == nil {
			if got != FormatQCOW2 {
				t.Fatalf("header check accepted a %s file", got)
			}
			if hd.Version != 2 && hd.Version != 3 {
				t.Fatalf("accepted version %d", hd.Version)
			}
		}
	})
}
