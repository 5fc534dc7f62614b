// Package labels parses and matches Kubernetes-style label selectors, as used by list and watch
// (`-l app=web,tier!=db,env in (a,b),!legacy`) and by node selectors.
package labels

import (
	"fmt"
	"sort"
	"strings"
)

// Operator of one requirement.
type Operator string

const (
	Equals       Operator = "="
	NotEquals    Operator = "!="
	In           Operator = "in"
	NotIn        Operator = "notin"
	Exists       Operator = "exists"
	DoesNotExist Operator = "!"
)

// Requirement is one term of a selector.
type Requirement struct {
	Key    string
	Op     Operator
	Values []string
}

// Selector is a conjunction of requirements; the empty selector matches everything.
type Selector []Requirement

// Matches says whether the labels satisfy every requirement.
func (s Selector) Matches(l map[string]string) bool {
	for _, r := range s {
		v, ok := l[r.Key]
		switch r.Op {
		case Equals:
			if !ok || v != r.Values[0] {
				return false
			}
		case NotEquals:
			if ok && v == r.Values[0] {
				return false
			}
		case In:
			if !ok || !contains(r.Values, v) {
				return false
			}
		case NotIn:
			if ok && contains(r.Values, v) {
				return false
			}
		case Exists:
			if !ok {
				return false
			}
		case DoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// Empty says whether the selector has no requirement.
func (s Selector) Empty() bool { return len(s) == 0 }

func (s Selector) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		switch r.Op {
		case Equals, NotEquals:
			parts[i] = r.Key + string(r.Op) + r.Values[0]
		case In, NotIn:
			parts[i] = r.Key + " " + string(r.Op) + " (" + strings.Join(r.Values, ",") + ")"
		case Exists:
			parts[i] = r.Key
		case DoesNotExist:
			parts[i] = "!" + r.Key
		}
	}
	return strings.Join(parts, ",")
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// FromMap returns a selector requiring every key=value of m.
func FromMap(m map[string]string) Selector {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := make(Selector, 0, len(m))
	for _, k := range keys {
		s = append(s, Requirement{Key: k, Op: Equals, Values: []string{m[k]}})
	}
	return s
}

// Parse reads a selector such as `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
func Parse(text string) (Selector, error) {
	p := &parser{s: text}
	var sel Selector
	p.skipSpace()
	if p.eof() {
		return sel, nil
	}
	for {
		r, err := p.requirement()
		if err != nil {
			return nil, fmt.Errorf("label selector %q: %w", text, err)
		}
		sel = append(sel, r)
		p.skipSpace()
		if p.eof() {
			return sel, nil
		}
		if p.s[p.i] != ',' {
			return nil, fmt.Errorf("label selector %q: expected ',' at offset %d", text, p.i)
		}
		p.i++
		p.skipSpace()
	}
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool { return p.i >= len(p.s) }

func (p *parser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func isWordChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/'
}

func (p *parser) word() string {
	start := p.i
	for p.i < len(p.s) && isWordChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *parser) requirement() (Requirement, error) {
	if p.eof() {
		return Requirement{}, fmt.Errorf("expected a requirement after ','")
	}
	if p.s[p.i] == '!' {
		p.i++
		p.skipSpace()
		k := p.word()
		if k == "" {
			return Requirement{}, fmt.Errorf("expected a key after '!' at offset %d", p.i)
		}
		return Requirement{Key: k, Op: DoesNotExist}, checkKey(k)
	}
	k := p.word()
	if k == "" {
		return Requirement{}, fmt.Errorf("expected a key at offset %d", p.i)
	}
	if err := checkKey(k); err != nil {
		return Requirement{}, err
	}
	p.skipSpace()
	if p.eof() || p.s[p.i] == ',' {
		return Requirement{Key: k, Op: Exists}, nil
	}
	switch {
	case strings.HasPrefix(p.s[p.i:], "!="):
		p.i += 2
		return p.value(k, NotEquals)
	case strings.HasPrefix(p.s[p.i:], "=="):
		p.i += 2
		return p.value(k, Equals)
	case p.s[p.i] == '=':
		p.i++
		return p.value(k, Equals)
	}
	op := p.word()
	switch op {
	case "in", "notin":
	default:
		return Requirement{}, fmt.Errorf("expected '=', '!=', 'in' or 'notin' after key %q", k)
	}
	p.skipSpace()
	if p.eof() || p.s[p.i] != '(' {
		return Requirement{}, fmt.Errorf("expected '(' after %q", op)
	}
	p.i++
	var vals []string
	for {
		p.skipSpace()
		v := p.word()
		if err := checkValue(v); err != nil {
			return Requirement{}, err
		}
		vals = append(vals, v)
		p.skipSpace()
		if p.eof() {
			return Requirement{}, fmt.Errorf("missing ')'")
		}
		if p.s[p.i] == ')' {
			p.i++
			break
		}
		if p.s[p.i] != ',' {
			return Requirement{}, fmt.Errorf("expected ',' or ')' at offset %d", p.i)
		}
		p.i++
	}
	return Requirement{Key: k, Op: Operator(op), Values: vals}, nil
}

func (p *parser) value(k string, op Operator) (Requirement, error) {
	p.skipSpace()
	v := p.word()
	if err := checkValue(v); err != nil {
		return Requirement{}, err
	}
	return Requirement{Key: k, Op: op, Values: []string{v}}, nil
}

func checkKey(k string) error {
	if len(k) > 317 || strings.Count(k, "/") > 1 || strings.HasPrefix(k, "/") || strings.HasSuffix(k, "/") {
		return fmt.Errorf("invalid label key %q", k)
	}
	return nil
}

func checkValue(v string) error {
	if len(v) > 63 || strings.Contains(v, "/") {
		return fmt.Errorf("invalid label value %q", v)
	}
	return nil
}
