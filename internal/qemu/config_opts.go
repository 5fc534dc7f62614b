package qemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// EscapeOptValue escapes s for use as a value in a QEMU key=value option list (QemuOpts and
// keyval syntax): a ',' ends the value unless doubled, so every ',' becomes ",,". Nothing else
// needs escaping in a value ('=' only matters before the first '=' of a key=value pair).
func EscapeOptValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// opts builds a QEMU option list "first,key=value,...", escaping every value.
type opts struct{ parts []string }

// newOpts starts a list whose first element is the implied value (a device driver, backend or
// machine name); "" starts an empty list. The implied value is always a constant of this
// package or a number: QEMU reads a first element with an '=' before any ',' as key=value, so
// input data always goes under an explicit key.
func newOpts(first string) *opts {
	o := &opts{}
	if first != "" {
		if strings.ContainsAny(first, ",=") {
			panic("qemu: implied option value " + first + " contains ',' or '='")
		}
		o.parts = append(o.parts, first)
	}
	return o
}

// set appends key=value; keys are constants of this package and never escaped.
func (o *opts) set(key, value string) *opts {
	o.parts = append(o.parts, key+"="+EscapeOptValue(value))
	return o
}

func (o *opts) String() string { return strings.Join(o.parts, ",") }

// serverSocket is a -chardev value for a listening unix socket at path.
func serverSocket(id, path string) string {
	return newOpts("socket").set("id", id).set("path", path).set("server", "on").set("wait", "off").String()
}

// mustJSON renders a -blockdev value. The types it is used with always marshal; HTML
// characters are left alone for readability (QEMU's parser reads either form).
func mustJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic("qemu: marshalling blockdev: " + err.Error())
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// checkPath validates a host path from the input: valid UTF-8 (JSON would silently replace
// invalid bytes), no control characters (NUL cannot be in argv; newlines garble logs), at most
// 4095 bytes; when abs is set, absolute, clean (no "", "." or ".." elements, so no trailing
// '/') and not "/" itself, which also rules out protocol prefixes such as "json:" or "nbd:".
func checkPath(what, p string, abs bool) error {
	if p == "" {
		return fmt.Errorf("%s: empty path", what)
	}
	if len(p) > 4095 {
		return fmt.Errorf("%s: path longer than 4095 bytes", what)
	}
	if !utf8.ValidString(p) {
		return fmt.Errorf("%s: path %q is not valid UTF-8", what, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s: path %q contains a control character", what, p)
		}
	}
	if !abs {
		return nil
	}
	if p[0] != '/' {
		return fmt.Errorf("%s: path %q is not absolute", what, p)
	}
	if p == "/" {
		return fmt.Errorf("%s: path is the root directory", what)
	}
	for _, el := range strings.Split(p[1:], "/") {
		if el == "." || el == ".." || el == "" {
			return fmt.Errorf("%s: path %q is not clean", what, p)
		}
	}
	return nil
}

// uniqueID is sanitizeID of orig, the ID of the device who (a what: disk, NIC), refusing an
// ID that collides with one in seen, which maps the IDs given so far to their originals.
func uniqueID(seen map[string]string, orig, who, what string) (string, error) {
	id, err := sanitizeID(orig)
	if err != nil {
		return "", fmt.Errorf("%s: %w", who, err)
	}
	if other, ok := seen[id]; ok {
		return "", fmt.Errorf("%s: id collides with %s %q", who, what, other)
	}
	seen[id] = orig
	return id, nil
}

// sanitizeID turns an input ID into the id part of QEMU object ids: every character outside
// [A-Za-z0-9_-] becomes '_'. IDs are limited to 63 bytes.
func sanitizeID(id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("empty ID")
	}
	if len(id) > 63 {
		return "", fmt.Errorf("ID longer than 63 bytes")
	}
	b := []byte(id)
	for i, c := range b {
		if !(isAlnum(c) || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b), nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// isToken reports whether s has 1..maxLen bytes of [A-Za-z0-9_.-].
func isToken(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// isCPUName: CPU models and features are not escapable in -cpu (its own parser splits on ',').
func isCPUName(s string) bool { return isToken(s, 64) }

// isSerial: virtio-blk and ATA serials hold at most 20 bytes.
func isSerial(s string) bool { return isToken(s, 20) }

// isIfName: a Linux interface name (IFNAMSIZ 16 with the NUL), not "." or "..".
func isIfName(s string) bool { return isToken(s, 15) && s != "." && s != ".." }

// checkDNSLabel validates a DNS-1123 label (project and VM names).
func checkDNSLabel(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	ok := len(s) <= 63 && s[0] != '-' && s[len(s)-1] != '-'
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
	}
	if !ok {
		return fmt.Errorf("%s %q is not a DNS-1123 label", what, s)
	}
	return nil
}

// isUUID reports whether s is a UUID in the canonical 8-4-4-4-12 hex form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
				return false
			}
		}
	}
	return true
}

// normalizeMAC validates a unicast MAC address "xx:xx:xx:xx:xx:xx" and lower-cases it.
func normalizeMAC(s string) (string, error) {
	if len(s) != 17 {
		return "", fmt.Errorf("MAC %q is not of the form xx:xx:xx:xx:xx:xx", s)
	}
	for i := 0; i < 17; i++ {
		c := s[i]
		if i%3 == 2 {
			if c != ':' {
				return "", fmt.Errorf("MAC %q is not of the form xx:xx:xx:xx:xx:xx", s)
			}
		} else if !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
			return "", fmt.Errorf("MAC %q is not of the form xx:xx:xx:xx:xx:xx", s)
		}
	}
	mac := strings.ToLower(s)
	if hexVal(mac[1])&1 != 0 {
		return "", fmt.Errorf("MAC %s is a multicast address", mac)
	}
	if mac == "00:00:00:00:00:00" {
		return "", fmt.Errorf("MAC %s is the zero address", mac)
	}
	return mac, nil
}

func hexVal(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}
