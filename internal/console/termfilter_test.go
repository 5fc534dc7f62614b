package console

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func filterAll(mode FilterMode, chunks ...string) string {
	var b bytes.Buffer
	f := NewTermFilter(&b, mode)
	for _, c := range chunks {
		if n, err := f.Write([]byte(c)); err != nil || n != len(c) {
			panic("write failed")
		}
	}
	return b.String()
}

func TestTermFilter(t *testing.T) {
	cases := []struct {
		name, in      string
		text, console string
	}{
		{"plain", "login: root\r\n\tok", "login: root\r\n\tok", "login: root\r\n\tok"},
		{"utf-8", "Grüße ✓ 🚀\n", "Grüße ✓ 🚀\n", "Grüße ✓ 🚀\n"},
		{"OSC 52 clipboard, BEL", "a\x1b]52;c;ZXZpbA==\x07b", "ab", "ab"},
		{"OSC title, ST", "a\x1b]0;pwned\x1b\\b", "ab", "ab"},
		{"OSC 8 hyperlink", "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link", "link"},
		{"DCS", "a\x1bP1$r0m\x1b\\b", "ab", "ab"},
		{"APC, PM, SOS", "\x1b_x\x1b\\a\x1b^y\x1b\\b\x1bXz\x1b\\c", "abc", "abc"},
		{"SGR", "\x1b[1;31mred\x1b[0m", "red", "\x1b[1;31mred\x1b[0m"},
		{"SGR truecolour with colons", "\x1b[38:2::1:2:3mx", "x", "\x1b[38:2::1:2:3mx"},
		{"cursor and erase", "\x1b[2J\x1b[H\x1b[10;5Hx\x1b[K\x1b[3A\x1b[C", "x", "\x1b[2J\x1b[H\x1b[10;5Hx\x1b[K\x1b[3A\x1b[C"},
		{"reports and modes dropped", "\x1b[6n\x1b[21t\x1b[c\x1b[?1049h\x1b[?2004hx", "x", "x"},
		{"CSI with intermediate dropped", "\x1b[0 qx\x1b[1\"px", "xx", "xx"},
		{"overlong CSI dropped", "\x1b[" + strings.Repeat("1;", 40) + "mx", "x", "x"},
		{"two-byte escapes dropped", "\x1bc\x1b7\x1b(Bx\x1b=", "x", "x"},
		{"C0 controls", "a\x00\x07\x08\x0b\x0c\x0e\x7fb", "ab", "a\bb"},
		{"C1 controls as UTF-8", "a\u0085\u009d0;t\u009cb\u009b31mc", "abc", "ab\x1b[31mc"},
		{"raw 8-bit C1 bytes", "a\x9b31mb", "a\uFFFD31mb", "a\uFFFD31mb"},
		{"invalid UTF-8", "a\xff\xc3b", "a\uFFFD\uFFFDb", "a\uFFFD\uFFFDb"},
		{"CAN aborts", "\x1b]0;x\x18y", "y", "y"},
		{"ESC inside OSC starts a new sequence", "\x1b]0;x\x1b[31my", "y", "\x1b[31my"},
		{"newline inside CSI is executed", "\x1b[3\n1mx", "\nx", "\n\x1b[31mx"},
	}
	for _, c := range cases {
		if got := filterAll(FilterText, c.in); got != c.text {
			t.Errorf("%s, text: %q -> %q, want %q", c.name, c.in, got, c.text)
		}
		if got := filterAll(FilterConsole, c.in); got != c.console {
			t.Errorf("%s, console: %q -> %q, want %q", c.name, c.in, got, c.console)
		}
		// Every split into two writes gives the same output.
		for i := 0; i <= len(c.in); i++ {
			if got := filterAll(FilterConsole, c.in[:i], c.in[i:]); got != c.console {
				t.Errorf("%s, console, split at %d: %q, want %q", c.name, i, got, c.console)
			}
		}
		// One byte at a time too.
		var bytesIn []string
		for i := 0; i < len(c.in); i++ {
			bytesIn = append(bytesIn, c.in[i:i+1])
		}
		if got := filterAll(FilterText, bytesIn...); got != c.text {
			t.Errorf("%s, text, byte by byte: %q, want %q", c.name, got, c.text)
		}
	}
}

// TestTermFilterStrayIntroducer: an unterminated string hides at most maxString bytes.
func TestTermFilterStrayIntroducer(t *testing.T) {
	in := "\x1b]" + strings.Repeat("x", maxString+10) + "visible"
	got := filterAll(FilterText, in)
	if !strings.HasSuffix(got, "visible") || len(got) > 20 {
		t.Errorf("after an unterminated OSC of %d bytes: %q", maxString+10, got)
	}
}

// checkFiltered fails when out holds anything the filter must not let through.
func checkFiltered(t *testing.T, mode FilterMode, out []byte) {
	t.Helper()
	if !utf8.Valid(out) {
		t.Fatalf("output is not UTF-8: %q", out)
	}
	s := string(out)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == 0x1b:
			if mode != FilterConsole {
				t.Fatalf("ESC in text output: %q", s)
			}
			j := i + 1
			if j >= len(s) || s[j] != '[' {
				t.Fatalf("ESC not followed by [ at %d: %q", i, s)
			}
			j++
			for j < len(s) && (s[j] >= '0' && s[j] <= ';') {
				j++
			}
			if j >= len(s) || !strings.ContainsRune(consoleCSIFinals, rune(s[j])) || j-i-2 > maxCSI {
				t.Fatalf("CSI sequence at %d is not one that is kept: %q", i, s[i:min(len(s), j+1)])
			}
			size = j + 1 - i
		case r == '\n' || r == '\r' || r == '\t':
		case r == '\b' && mode == FilterConsole:
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			t.Fatalf("control %U at %d: %q", r, i, s)
		}
		i += size
	}
}

// FuzzTermFilter: whatever a guest prints, the output holds only text, the kept controls
// and the kept CSI sequences, and it does not depend on how the input is split into writes.
func FuzzTermFilter(f *testing.F) {
	f.Add([]byte("\x1b]52;c;ZXZpbA==\x07ok\x1b[31mred\x1b[0m"), uint16(5))
	f.Add([]byte("\x1bP1$r0m\x1b\\\u009d0;t\u009c\xff\xc3"), uint16(3))
	f.Add([]byte("Grüße 🚀\x1b[10;5H\x1b[?25l\x1b[6n"), uint16(8))
	f.Add([]byte("\x1b[3\n1m\x1b]0;x\x1b[31my"), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		for _, mode := range []FilterMode{FilterText, FilterConsole} {
			var whole bytes.Buffer
			fw := NewTermFilter(&whole, mode)
			if _, err := fw.Write(data); err != nil {
				t.Fatal(err)
			}
			checkFiltered(t, mode, whole.Bytes())
			var parts bytes.Buffer
			fp := NewTermFilter(&parts, mode)
			step := int(split)%7 + 1
			at := 0
			if len(data) > 0 {
				at = int(split) % (len(data) + 1)
			}
			_, _ = fp.Write(data[:at])
			for rest := data[at:]; len(rest) > 0; {
				n := min(step, len(rest))
				_, _ = fp.Write(rest[:n])
				rest = rest[n:]
			}
			if !bytes.Equal(whole.Bytes(), parts.Bytes()) {
				t.Fatalf("mode %d: split output %q differs from whole %q", mode, parts.Bytes(), whole.Bytes())
			}
		}
	})
}
