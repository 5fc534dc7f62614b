package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/printers"
)

// The cell helpers live in package printers, shared with the API server's Table output.
const none = printers.None

var (
	lookupPath    = printers.LookupPath
	humanDuration = printers.HumanDuration
	parseTime     = printers.ParseTime
	age           = printers.Age
	formatCell    = printers.FormatCell
	cellString    = printers.CellString
)

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
