package console

import (
	"io"
	"unicode/utf8"
)

// FilterMode says what a TermFilter lets through to the user's terminal.
type FilterMode int

const (
	// FilterText keeps printable text (UTF-8), newline, carriage return and tab: for logs.
	FilterText FilterMode = iota
	// FilterConsole also keeps what an interactive serial console needs to draw: backspace,
	// SGR colours and attributes (CSI ... m), and CSI cursor movement, erase, insert/delete
	// and scroll-region sequences with numeric parameters only.
	FilterConsole
)

// consoleCSIFinals are the final bytes of the CSI sequences FilterConsole keeps: cursor up,
// down, forward, back, next/previous line, column, position (H, f), line (d); erase in
// display and line (J, K); insert/delete lines and characters (L, M, P, @, X); scroll (S, T)
// and scroll region (r); SGR (m). Reports (n, c, t), modes (h, l) and everything else go.
const consoleCSIFinals = "ABCDEFGHJKLMPSTX@dfmr"

// maxCSI bounds the parameters of a kept CSI sequence; a longer one is dropped.
const maxCSI = 32

// maxString bounds how much of an OSC, DCS, SOS, PM or APC string is swallowed waiting for
// its terminator; past it the filter returns to text (which it filters as usual), so a
// stray introducer cannot hide the rest of a console.
const maxString = 64 << 10

type filterState uint8

const (
	stGround    filterState = iota
	stEsc                   // after ESC
	stEscInter              // ESC and intermediate bytes
	stCSI                   // ESC [ or U+009B: parameters, intermediates, final
	stString                // OSC, DCS, SOS, PM, APC: until BEL or ST
	stStringEsc             // ESC inside a string: ST when '\' follows
)

// TermFilter is a streaming filter between a guest's console output and the user's terminal.
// It drops what a terminal would act on beyond drawing text: OSC strings (window titles,
// OSC 52 clipboard writes, hyperlinks), DCS, SOS, PM and APC strings, other escape sequences,
// C0 controls but the kept ones, and C1 controls (U+0080 to U+009F; those that introduce
// sequences are treated like their ESC forms). Bytes that are not UTF-8 become U+FFFD.
// A sequence split across writes is recognised as a whole.
type TermFilter struct {
	w    io.Writer
	mode FilterMode

	state  filterState
	pend   [utf8.UTFMax]byte // an incomplete UTF-8 sequence from the previous write
	npend  int
	csi    []byte // ESC [ and the parameters and intermediates so far
	csiBad bool   // the CSI sequence cannot be kept
	strLen int
	out    []byte
}

// NewTermFilter returns a filter writing to w.
func NewTermFilter(w io.Writer, mode FilterMode) *TermFilter {
	return &TermFilter{w: w, mode: mode, csi: make([]byte, 0, maxCSI+2)}
}

// Write filters p and writes what is kept. It reports len(p) unless the underlying writer
// fails.
func (f *TermFilter) Write(p []byte) (int, error) {
	f.out = f.out[:0]
	in := p
	if f.npend > 0 {
		// the rune begun in the previous write goes first
		in = append(append(make([]byte, 0, f.npend+len(p)), f.pend[:f.npend]...), p...)
		f.npend = 0
	}
	f.decode(in)
	if len(f.out) > 0 {
		if _, err := f.w.Write(f.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// decode runs the runes of p through the state machine; an incomplete rune at the end is
// kept for the next write.
func (f *TermFilter) decode(p []byte) {
	for len(p) > 0 {
		c := p[0]
		if c < utf8.RuneSelf {
			f.rune(rune(c), p[:1])
			p = p[1:]
			continue
		}
		if !utf8.FullRune(p) {
			f.npend = copy(f.pend[:], p)
			return
		}
		r, size := utf8.DecodeRune(p)
		f.rune(r, p[:size])
		p = p[size:]
	}
}

func (f *TermFilter) rune(r rune, raw []byte) {
	for {
		if !f.step(r, raw) {
			return
		}
		// the rune ended a sequence and must be read again as text
	}
}

// step handles one rune in the current state; it reports whether the rune must be handled
// again in the (new) state.
func (f *TermFilter) step(r rune, raw []byte) bool {
	switch f.state {
	case stGround:
		f.ground(r, raw)
	case stEsc:
		switch {
		case r == '[':
			f.startCSI()
		case r == ']' || r == 'P' || r == 'X' || r == '^' || r == '_':
			f.state, f.strLen = stString, 0
		case r >= 0x20 && r <= 0x2f:
			f.state = stEscInter
		case r >= 0x30 && r <= 0x7e:
			f.state = stGround // a two-byte escape sequence: dropped
		case r == 0x1b:
		case r == 0x18 || r == 0x1a: // CAN, SUB cancel
			f.state = stGround
		default:
			f.state = stGround
			return true
		}
	case stEscInter:
		switch {
		case r >= 0x20 && r <= 0x2f:
		case r >= 0x30 && r <= 0x7e:
			f.state = stGround
		case r == 0x1b:
			f.state = stEsc
		default:
			f.state = stGround
			return r != 0x18 && r != 0x1a
		}
	case stCSI:
		switch {
		case r >= 0x30 && r <= 0x3f: // parameters
			if (r < '0' || r > ';') || len(f.csi) > 2 && f.csiInter() {
				f.csiBad = true // private markers (< = > ?) or a parameter after an intermediate
			}
			f.csiAppend(byte(r))
		case r >= 0x20 && r <= 0x2f: // intermediates
			f.csiBad = true
			f.csiAppend(byte(r))
		case r >= 0x40 && r <= 0x7e: // final
			if f.mode == FilterConsole && !f.csiBad && containsRune(consoleCSIFinals, r) {
				f.out = append(f.out, f.csi...)
				f.out = append(f.out, byte(r))
			}
			f.state = stGround
		case r == 0x1b:
			f.state = stEsc
		case r == 0x18 || r == 0x1a:
			f.state = stGround
		case r < 0x20:
			f.control(r) // a terminal executes C0 controls inside a sequence
		default:
			f.state = stGround
			return true
		}
	case stString:
		switch {
		case r == 0x07 || r == 0x9c || r == 0x18 || r == 0x1a: // BEL, ST, CAN, SUB end it
			f.state = stGround
		case r == 0x1b:
			f.state = stStringEsc
		default:
			f.strLen += len(raw)
			if f.strLen > maxString {
				f.state = stGround
			}
		}
	case stStringEsc:
		if r == '\\' {
			f.state = stGround
			return false
		}
		f.state = stEsc // ESC ended the string and starts a new sequence
		return true
	}
	return false
}

func (f *TermFilter) csiInter() bool {
	last := f.csi[len(f.csi)-1]
	return last >= 0x20 && last <= 0x2f
}

func (f *TermFilter) startCSI() {
	f.state = stCSI
	f.csi = append(f.csi[:0], 0x1b, '[')
	f.csiBad = false
}

func (f *TermFilter) csiAppend(b byte) {
	if len(f.csi) >= maxCSI+2 {
		f.csiBad = true
		return
	}
	f.csi = append(f.csi, b)
}

func (f *TermFilter) ground(r rune, raw []byte) {
	switch {
	case r == 0x1b:
		f.state = stEsc
	case r < 0x20 || r == 0x7f:
		f.control(r)
	case r == 0x9b:
		f.startCSI()
	case r == 0x90 || r == 0x98 || r == 0x9d || r == 0x9e || r == 0x9f:
		f.state, f.strLen = stString, 0
	case r >= 0x80 && r <= 0x9f:
		// other C1 controls: dropped
	case r == utf8.RuneError && len(raw) == 1:
		f.out = append(f.out, "\uFFFD"...)
	default:
		f.out = append(f.out, raw...)
	}
}

// control keeps newline, carriage return, tab and (on a console) backspace.
func (f *TermFilter) control(r rune) {
	switch {
	case r == '\n' || r == '\r' || r == '\t':
		f.out = append(f.out, byte(r))
	case r == '\b' && f.mode == FilterConsole:
		f.out = append(f.out, byte(r))
	}
}

func containsRune(s string, r rune) bool {
	for _, c := range s {
		if c == r {
			return true
		}
	}
	return false
}
