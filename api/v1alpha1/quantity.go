package v1alpha1

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// Quantity is a Kubernetes-style size such as "512Mi", "10Gi", "1G" or "1500". It keeps the
// text it was written with; Value parses it. In JSON it is a string, and a plain number is
// accepted on input.
type Quantity string

// UnmarshalJSON accepts a string or a number.
func (q *Quantity) UnmarshalJSON(b []byte) error {
	if s, isString, err := jsonString(b); isString {
		if err != nil {
			return err
		}
		*q = Quantity(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("a quantity must be a string such as \"10Gi\" or a number")
	}
	*q = Quantity(n.String())
	return nil
}

// jsonString decodes b when it holds a JSON string; isString is false, and nothing is
// decoded, when b holds anything else (a number, say).
func jsonString(b []byte) (s string, isString bool, err error) {
	if len(b) == 0 || b[0] != '"' {
		return "", false, nil
	}
	err = json.Unmarshal(b, &s)
	return s, true, err
}

var quantitySuffixes = []struct {
	s string
	m *big.Rat
}{
	{"Ki", big.NewRat(1<<10, 1)}, {"Mi", big.NewRat(1<<20, 1)}, {"Gi", big.NewRat(1<<30, 1)},
	{"Ti", big.NewRat(1<<40, 1)}, {"Pi", big.NewRat(1<<50, 1)}, {"Ei", big.NewRat(1<<60, 1)},
	{"k", big.NewRat(1e3, 1)}, {"M", big.NewRat(1e6, 1)}, {"G", big.NewRat(1e9, 1)},
	{"T", big.NewRat(1e12, 1)}, {"P", big.NewRat(1e15, 1)}, {"E", big.NewRat(1e18, 1)},
	{"m", big.NewRat(1, 1000)},
}

var quantityNumber = regexp.MustCompile(`^([0-9]+(\.[0-9]*)?|\.[0-9]+)$`)

// ParseQuantity returns the value of s rounded up to an integer (bytes for sizes).
// It rejects negative values, empty strings, exponents and values over int64.
func ParseQuantity(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty quantity")
	}
	if len(s) > 64 {
		return 0, fmt.Errorf("quantity %.20q... is too long", s)
	}
	num := s
	mult := big.NewRat(1, 1)
	for _, suf := range quantitySuffixes {
		if strings.HasSuffix(s, suf.s) {
			num = strings.TrimSuffix(s, suf.s)
			mult = suf.m
			break
		}
	}
	if !quantityNumber.MatchString(num) {
		return 0, fmt.Errorf("quantity %q must be a non-negative number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T)", s)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("quantity %q must be a non-negative number with an optional suffix (Ki, Mi, Gi, Ti, k, M, G, T)", s)
	}
	r.Mul(r, mult)
	// round up
	q := new(big.Int).Quo(r.Num(), r.Denom())
	if new(big.Rat).SetInt(q).Cmp(r) < 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsInt64() || q.Int64() > math.MaxInt64/2 {
		return 0, fmt.Errorf("quantity %q is too large", s)
	}
	return q.Int64(), nil
}

// Value parses q; see ParseQuantity.
func (q Quantity) Value() (int64, error) { return ParseQuantity(string(q)) }

// MustValue parses q and returns 0 when it does not parse (for already validated objects).
func (q Quantity) MustValue() int64 {
	v, _ := q.Value()
	return v
}

// BytesQuantity renders n bytes with the largest binary suffix that divides it exactly.
func BytesQuantity(n int64) Quantity {
	if n == 0 {
		return "0"
	}
	for _, u := range []struct {
		s string
		v int64
	}{{"Ei", 1 << 60}, {"Pi", 1 << 50}, {"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n%u.v == 0 {
			return Quantity(strconv.FormatInt(n/u.v, 10) + u.s)
		}
	}
	return Quantity(strconv.FormatInt(n, 10))
}

// HumanBytes renders n bytes for people, e.g. "1.5Gi".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + string("KMGTPE"[exp]) + "i"
}
