// Package printers renders object fields as table cells, the same way for the CLI's tables
// and for the API server's Table answers (what kubectl prints).
package printers

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// None is what an empty cell shows.
const None = "<none>"

// LookupPath follows a dotted path through maps; digit segments index arrays. A dot
// escaped with a backslash (`\.`) is part of the segment, as in an annotation key.
func LookupPath(o any, path string) (any, bool) {
	cur := o
	for _, seg := range splitPath(path) {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[seg]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, cur != nil
}

// splitPath splits a column path at its unescaped dots.
func splitPath(path string) []string {
	if !strings.Contains(path, `\`) {
		return strings.Split(path, ".")
	}
	var out []string
	var cur strings.Builder
	for i := 0; i < len(path); i++ {
		switch {
		case path[i] == '\\' && i+1 < len(path) && path[i+1] == '.':
			cur.WriteByte('.')
			i++
		case path[i] == '.':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(path[i])
		}
	}
	return append(out, cur.String())
}

// HumanDuration renders d briefly, with more precision for short durations: 45s, 3m12s,
// 42m, 5h, 5h30m, 20h, 3d, 3d4h, 60d, 2y, 2y10d, 9y.
func HumanDuration(d time.Duration) string {
	if d < -time.Second {
		return "<invalid>"
	}
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	if s < 120 {
		return fmt.Sprintf("%ds", s)
	}
	m := s / 60
	if m < 10 {
		if s%60 == 0 {
			return fmt.Sprintf("%dm", m)
		}
		return fmt.Sprintf("%dm%ds", m, s%60)
	}
	if m < 180 {
		return fmt.Sprintf("%dm", m)
	}
	h := m / 60
	const day, year = 24, 24 * 365
	switch {
	case h < 8:
		if m%60 == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m%60)
	case h < 2*day:
		return fmt.Sprintf("%dh", h)
	case h < 8*day:
		if h%day == 0 {
			return fmt.Sprintf("%dd", h/day)
		}
		return fmt.Sprintf("%dd%dh", h/day, h%day)
	case h < 2*year:
		return fmt.Sprintf("%dd", h/day)
	case h < 8*year:
		if dd := (h % year) / day; dd != 0 {
			return fmt.Sprintf("%dy%dd", h/year, dd)
		}
		return fmt.Sprintf("%dy", h/year)
	}
	return fmt.Sprintf("%dy", h/year)
}

// ParseTime reads an RFC 3339 timestamp.
func ParseTime(v any) (time.Time, bool) {
	s, ok := v.(string)
	if !ok || s == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// Age renders the time since the timestamp v, or "<unknown>".
func Age(v any, now time.Time) string {
	t, ok := ParseTime(v)
	if !ok {
		return "<unknown>"
	}
	return HumanDuration(now.Sub(t))
}

// FormatCell renders one table cell of a column.
func FormatCell(v any, present bool, format string, now time.Time) string {
	if format == "age" {
		if !present {
			return "<unknown>"
		}
		if _, ok := ParseTime(v); !ok {
			return CellString(v)
		}
		return Age(v, now)
	}
	if !present {
		return None
	}
	switch format {
	case "bytes":
		switch x := v.(type) {
		case json.Number:
			if n, err := x.Int64(); err == nil && n >= 0 {
				return v1alpha1.HumanBytes(n)
			}
		case string:
			if n, err := v1alpha1.ParseQuantity(x); err == nil {
				return v1alpha1.HumanBytes(n)
			}
		case float64:
			if x >= 0 {
				return v1alpha1.HumanBytes(int64(x))
			}
		}
	case "bool":
		switch x := v.(type) {
		case bool:
			return strconv.FormatBool(x)
		case string:
			if b, err := strconv.ParseBool(x); err == nil {
				return strconv.FormatBool(b)
			}
		}
	}
	return CellString(v)
}

// CellString renders any value on one line.
func CellString(v any) string {
	var s string
	switch x := v.(type) {
	case nil:
		return None
	case string:
		s = x
	case json.Number:
		s = x.String()
	case bool:
		s = strconv.FormatBool(x)
	case float64:
		s = strconv.FormatFloat(x, 'f', -1, 64)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			s = fmt.Sprint(x)
		} else {
			s = string(b)
		}
	}
	if s == "" {
		return None
	}
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}
