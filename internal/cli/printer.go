package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

const none = "<none>"

// lookupPath follows a dotted path through maps; digit segments index arrays.
func lookupPath(o any, path string) (any, bool) {
	cur := o
	for _, seg := range strings.Split(path, ".") {
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

// humanDuration renders d briefly, with more precision for short durations: 45s, 3m12s,
// 42m, 5h, 5h30m, 20h, 3d, 3d4h, 60d, 2y, 2y10d, 9y.
func humanDuration(d time.Duration) string {
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

// parseTime reads an RFC 3339 timestamp.
func parseTime(v any) (time.Time, bool) {
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

// age renders the time since the timestamp v, or "<unknown>".
func age(v any, now time.Time) string {
	t, ok := parseTime(v)
	if !ok {
		return "<unknown>"
	}
	return humanDuration(now.Sub(t))
}

// formatCell renders one table cell of a column.
func formatCell(v any, present bool, format string, now time.Time) string {
	if format == "age" {
		if !present {
			return "<unknown>"
		}
		if _, ok := parseTime(v); !ok {
			return cellString(v)
		}
		return age(v, now)
	}
	if !present {
		return none
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
	return cellString(v)
}

// cellString renders any value on one line.
func cellString(v any) string {
	var s string
	switch x := v.(type) {
	case nil:
		return none
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
		return none
	}
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// tablePrinter prints objects of one kind as a kubectl-like table.
type tablePrinter struct {
	kind      *v1alpha1.KindInfo
	wide      bool
	project   bool // leading PROJECT column (all projects)
	kindName  bool // NAME as <singular>/<name> (several kinds in one output)
	noHeaders bool
	now       time.Time

	widths []int // of the printed table, to align later rows (watch)
	// reserve makes the table as wide as the values columns may take later (watch).
	reserve bool
}

func (p *tablePrinter) columns() []v1alpha1.Column {
	var cols []v1alpha1.Column
	for _, c := range p.kind.Columns {
		if c.Wide && !p.wide {
			continue
		}
		cols = append(cols, c)
	}
	return cols
}

// leading is the number of cells before the kind's columns (PROJECT, NAME).
func (p *tablePrinter) leading() int {
	if p.project {
		return 2
	}
	return 1
}

func (p *tablePrinter) header() []string {
	var h []string
	if p.project {
		h = append(h, "PROJECT")
	}
	h = append(h, "NAME")
	for _, c := range p.columns() {
		h = append(h, c.Name)
	}
	return h
}

func (p *tablePrinter) row(o object) []string {
	var r []string
	if p.project {
		r = append(r, cellString(str(o, "metadata.namespace")))
	}
	name := cellString(objName(o))
	if p.kindName {
		name = p.kind.Singular + "/" + name
	}
	r = append(r, name)
	for _, c := range p.columns() {
		v, ok := lookupPath(o, c.Path)
		r = append(r, formatCell(v, ok, c.Format, p.now))
	}
	return r
}

const colPadding = 3

// printTable writes the header (unless noHeaders) and a row per object, aligned.
func (p *tablePrinter) printTable(w io.Writer, objs []object) error {
	rows := make([][]string, 0, len(objs)+1)
	if !p.noHeaders {
		rows = append(rows, p.header())
	}
	for _, o := range objs {
		rows = append(rows, p.row(o))
	}
	p.widths = nil
	if p.reserve {
		p.grow(p.widest())
	}
	for _, r := range rows {
		p.grow(r)
	}
	for _, r := range rows {
		if err := p.printRowCells(w, r); err != nil {
			return err
		}
	}
	return nil
}

// widest is a row of blanks as wide as the widest value a column can take where the kind
// lists them (its phases), so that a table printed before a watch has room for later rows.
func (p *tablePrinter) widest() []string {
	r := make([]string, p.leading())
	for _, c := range p.columns() {
		n := 0
		if c.Path == "status.phase" {
			for _, ph := range p.kind.Phases {
				n = max(n, len(ph))
			}
		}
		r = append(r, strings.Repeat(" ", n))
	}
	return r
}

func (p *tablePrinter) grow(r []string) {
	for i, c := range r {
		n := utf8.RuneCountInString(c)
		if i >= len(p.widths) {
			p.widths = append(p.widths, n)
		} else if n > p.widths[i] {
			p.widths[i] = n
		}
	}
}

// printRow writes one more row aligned with the table printed before (watch).
func (p *tablePrinter) printRow(w io.Writer, o object) error {
	return p.printRowCells(w, p.row(o))
}

// printRowCells writes cells padded to the widths seen so far.
func (p *tablePrinter) printRowCells(w io.Writer, r []string) error {
	p.grow(r)
	var b strings.Builder
	for i, c := range r {
		b.WriteString(c)
		if i < len(r)-1 {
			b.WriteString(strings.Repeat(" ", p.widths[i]-utf8.RuneCountInString(c)+colPadding))
		}
	}
	b.WriteByte('\n')
	_, err := io.WriteString(w, b.String())
	return err
}

// printObjects writes objects as yaml or json: one object as itself, several as a List.
func printObjects(w io.Writer, format string, objs []object, single bool) error {
	var v any
	if single && len(objs) == 1 {
		v = objs[0]
	} else {
		items := make([]any, len(objs))
		for i, o := range objs {
			items[i] = o
		}
		v = map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}, "items": items}
	}
	return printValue(w, format, v)
}

// printValue writes v as indented JSON or as YAML.
func printValue(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(v, "", "    ")
		if err != nil {
			return err
		}
		b = append(b, '\n')
		_, err = w.Write(b)
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("unknown output format %q", format)
}
