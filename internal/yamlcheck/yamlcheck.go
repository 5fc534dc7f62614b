// Package yamlcheck inspects YAML for aliases before it is converted to JSON, without
// expanding them. A YAML alias (*name) repeats an anchored node (&name) wherever it appears,
// so a small document can stand for an enormous one ("billion laughs"): converting it
// expands every alias and can take gigabytes. The check parses the node tree, in which an
// alias is one small node pointing at its anchor, and computes what expansion would cost.
package yamlcheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	yaml "go.yaml.in/yaml/v3"
)

// Alias is one alias found in a document.
type Alias struct {
	Name   string
	Line   int // 1-based
	Column int // 1-based
}

func (a Alias) String() string {
	return fmt.Sprintf("*%s at line %d, column %d", a.Name, a.Line, a.Column)
}

// Report says what a YAML stream holds.
type Report struct {
	// Aliases is the number of alias nodes in all documents.
	Aliases int
	// First is the first alias (set when Aliases > 0).
	First Alias
	// Expanded estimates the size in bytes of the stream as JSON with every alias expanded.
	// It saturates at Limit+1 when a Limit was given and exceeded.
	Expanded int64
}

// ErrRecursive is returned for an alias that refers to a node containing it.
var ErrRecursive = errors.New("recursive YAML alias")

// Inspect checks data. When data holds no '*' at all it cannot hold an alias, and Inspect
// does not parse it (the common case costs one byte scan); Expanded is then len(data).
// limit > 0 stops counting once the expanded size passes it. A stream that does not parse
// gives the parser's error.
func Inspect(data []byte, limit int64) (Report, error) {
	if bytes.IndexByte(data, '*') < 0 {
		return Report{Expanded: int64(len(data))}, nil
	}
	var r Report
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return r, nil
		}
		if err != nil {
			return r, err
		}
		s := sizer{memo: map[*yaml.Node]int64{}, limit: limit, report: &r}
		n, err := s.size(&doc)
		if err != nil {
			return r, err
		}
		r.Expanded = addSat(r.Expanded, n, limit)
		if limit > 0 && r.Expanded > limit {
			return r, nil
		}
	}
}

// sizer computes the expanded JSON size of a node tree in one pass: each anchored node is
// measured once (memo), so nested aliases cost nothing more to measure than to parse.
type sizer struct {
	memo   map[*yaml.Node]int64
	active map[*yaml.Node]bool // on the current path: an alias to one of these is recursive
	limit  int64
	report *Report
}

func addSat(a, b, limit int64) int64 {
	const max = int64(1) << 62
	s := a + b
	if s > max || s < 0 {
		s = max
	}
	if limit > 0 && s > limit {
		s = limit + 1
	}
	return s
}

func (s *sizer) size(n *yaml.Node) (int64, error) {
	if n == nil {
		return 0, nil
	}
	if v, ok := s.memo[n]; ok {
		return v, nil
	}
	if s.active == nil {
		s.active = map[*yaml.Node]bool{}
	}
	if s.active[n] {
		return 0, fmt.Errorf("%w at line %d, column %d", ErrRecursive, n.Line, n.Column)
	}
	var total int64
	switch n.Kind {
	case yaml.AliasNode:
		s.report.Aliases++
		if s.report.Aliases == 1 {
			s.report.First = Alias{Name: n.Value, Line: n.Line, Column: n.Column}
		}
		s.active[n] = true
		v, err := s.size(n.Alias)
		delete(s.active, n)
		if err != nil {
			return 0, err
		}
		total = v
	case yaml.ScalarNode:
		total = int64(len(n.Value)) + 3 // quotes and a separator
	default: // documents, mappings, sequences
		s.active[n] = true
		total = 2
		for _, c := range n.Content {
			v, err := s.size(c)
			if err != nil {
				delete(s.active, n)
				return 0, err
			}
			total = addSat(total, v+1, s.limit)
		}
		delete(s.active, n)
	}
	if n.Anchor != "" || n.Kind == yaml.AliasNode {
		s.memo[n] = total
	}
	return total, nil
}
