package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/rakhsh/rakhsh/internal/yamlcheck"
)

// maxManifestSize bounds what apply/delete -f read from one file or stdin.
const maxManifestSize = 64 << 20

// maxAliasExpansion bounds the size a YAML document that uses aliases (*name) may expand to.
// Aliases repeat their anchored node, so a small document can stand for gigabytes; the size
// is computed from the node tree before anything is expanded. (One object the server accepts
// is at most a few MiB.)
const maxAliasExpansion = 16 << 20

// checkYAMLAliases refuses YAML whose aliases would expand it past maxAliasExpansion, or
// whose alias refers to a node containing it. YAML without aliases is not parsed here.
func checkYAMLAliases(data []byte) error {
	rep, err := yamlcheck.Inspect(data, maxAliasExpansion)
	if err != nil {
		return err
	}
	if rep.Aliases > 0 && rep.Expanded > maxAliasExpansion {
		return fmt.Errorf("its %d YAML aliases (the first %s) would expand it to more than %d MiB", rep.Aliases, rep.First, maxAliasExpansion>>20)
	}
	return nil
}

// Manifest is one object read from a file: a YAML document, a JSON value of a stream, or one
// item of a List. Exactly one of Object and Err is set.
type Manifest struct {
	Source string // file name, or "stdin"
	Index  int    // 1-based number of the document in its source
	Item   int    // 1-based item number within a List document; 0 when not from a List
	Line   int    // first line of the document, 1-based; 0 when unknown
	Object map[string]any
	Err    error
}

// Where names the manifest for messages: `vm.yaml, document 2 (line 7)`.
func (m *Manifest) Where() string {
	var b strings.Builder
	b.WriteString(m.Source)
	fmt.Fprintf(&b, ", document %d", m.Index)
	if m.Item > 0 {
		fmt.Fprintf(&b, ", item %d", m.Item)
	}
	if m.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", m.Line)
	}
	return b.String()
}

// SplitManifests reads every object of data: YAML documents separated by `---`, or JSON (one
// object, a List with items, an array, or a stream of objects). A document that cannot be
// read gives a Manifest with Err and does not stop the others (except that nothing after a
// broken JSON value of a stream can be found). Empty documents are skipped.
func SplitManifests(source string, data []byte) []Manifest {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		if ms, ok := splitJSON(source, data); ok {
			return ms
		}
	}
	return splitYAML(source, data)
}

// splitJSON decodes a stream of JSON values. It reports false when the first value does not
// decode, so the input can be tried as YAML (flow style).
func splitJSON(source string, data []byte) ([]Manifest, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out []Manifest
	index := 0
	for {
		start := int(dec.InputOffset())
		for start < len(data) && isSpace(data[start]) {
			start++
		}
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return out, true
		}
		index++
		line := lineAt(data, start)
		if err != nil {
			if index == 1 {
				return nil, false
			}
			off := start
			var se *json.SyntaxError
			if errors.As(err, &se) {
				off = int(se.Offset)
			}
			out = append(out, Manifest{Source: source, Index: index, Line: line,
				Err: fmt.Errorf("invalid JSON at line %d: %w", lineAt(data, off), err)})
			return out, true
		}
		out = append(out, expand(Manifest{Source: source, Index: index, Line: line}, v)...)
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// lineAt returns the 1-based line of byte offset off.
func lineAt(data []byte, off int) int {
	if off > len(data) {
		off = len(data)
	}
	if off < 0 {
		off = 0
	}
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// yamlChunk is the text of one YAML document and the line it starts on.
type yamlChunk struct {
	text []byte
	line int
}

// splitYAMLChunks cuts a YAML stream at document markers (`---` and `...` at the start of
// a line). It works on text so that one broken document cannot hide the others.
func splitYAMLChunks(data []byte) []yamlChunk {
	var chunks []yamlChunk
	var cur bytes.Buffer
	curLine := 1
	hasContent := false
	flush := func() {
		if hasContent {
			chunks = append(chunks, yamlChunk{text: bytes.Clone(cur.Bytes()), line: curLine})
		}
		cur.Reset()
		hasContent = false
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, ln := range lines {
		lineNo := i + 1
		body := bytes.TrimRight(ln, "\r\n")
		if marker, rest, ok := documentMarker(body); ok {
			flush()
			curLine = lineNo + 1
			if marker == "---" && len(bytes.TrimSpace(rest)) > 0 && rest[0] != '#' {
				// content on the marker line, e.g. `--- {kind: Secret}`
				curLine = lineNo
				cur.WriteString("   ")
				cur.Write(rest)
				cur.WriteByte('\n')
				hasContent = true
			}
			continue
		}
		if !hasContent {
			// leading blank lines, comments and directives are not content; the document's
			// line is that of its first content line
			if t := bytes.TrimSpace(body); len(t) == 0 || t[0] == '#' || body[0] == '%' {
				curLine = lineNo + 1
				continue
			}
			hasContent = true
		}
		cur.Write(ln)
	}
	flush()
	return chunks
}

// documentMarker reports whether a line is `---` or `...` (optionally followed by space and
// more), returning the marker and what follows it.
func documentMarker(line []byte) (string, []byte, bool) {
	for _, m := range []string{"---", "..."} {
		if bytes.HasPrefix(line, []byte(m)) {
			rest := line[3:]
			if len(rest) == 0 {
				return m, nil, true
			}
			if rest[0] == ' ' || rest[0] == '\t' {
				return m, bytes.TrimLeft(rest, " \t"), true
			}
		}
	}
	return "", nil, false
}

var yamlLineRE = regexp.MustCompile(`\bline (\d+)`)

func splitYAML(source string, data []byte) []Manifest {
	var out []Manifest
	index := 0
	for _, ch := range splitYAMLChunks(data) {
		var j []byte
		err := checkYAMLAliases(ch.text)
		if err == nil {
			j, err = yaml.YAMLToJSONStrict(ch.text)
		}
		if err == nil && (len(bytes.TrimSpace(j)) == 0 || string(bytes.TrimSpace(j)) == "null") {
			continue // empty document
		}
		index++
		m := Manifest{Source: source, Index: index, Line: ch.line}
		if err != nil {
			// make the parser's line numbers absolute
			msg := yamlLineRE.ReplaceAllStringFunc(err.Error(), func(s string) string {
				n, convErr := strconv.Atoi(s[len("line "):])
				if convErr != nil {
					return s
				}
				return "line " + strconv.Itoa(n+ch.line-1)
			})
			m.Err = fmt.Errorf("invalid YAML: %s", strings.TrimPrefix(msg, "error converting YAML to JSON: "))
			out = append(out, m)
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			m.Err = fmt.Errorf("invalid YAML: %w", err)
			out = append(out, m)
			continue
		}
		out = append(out, expand(m, v)...)
	}
	return out
}

// expand checks that v is an object with a kind and unrolls Lists and arrays into items.
func expand(m Manifest, v any) []Manifest {
	switch x := v.(type) {
	case nil:
		return nil
	case []any:
		return expandItems(m, x)
	case map[string]any:
		kind, _ := x["kind"].(string)
		if items, ok := x["items"].([]any); ok && (kind == "List" || strings.HasSuffix(kind, "List")) {
			return expandItems(m, items)
		}
		if kind == "" {
			m.Err = errors.New("the object has no kind")
			return []Manifest{m}
		}
		m.Object = x
		return []Manifest{m}
	}
	m.Err = fmt.Errorf("a manifest must be an object (a mapping with apiVersion, kind, metadata...), not %s", typeName(v))
	return []Manifest{m}
}

func expandItems(m Manifest, items []any) []Manifest {
	var out []Manifest
	for i, it := range items {
		im := m
		im.Item = i + 1
		obj, ok := it.(map[string]any)
		if !ok {
			im.Err = fmt.Errorf("a list item must be an object, not %s", typeName(it))
			out = append(out, im)
			continue
		}
		if kind, _ := obj["kind"].(string); kind == "" {
			im.Err = errors.New("the object has no kind")
			out = append(out, im)
			continue
		}
		im.Object = obj
		out = append(out, im)
	}
	return out
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number, float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// readManifests reads every -f argument: files, directories (their *.yaml, *.yml and *.json
// files, in name order) and "-" for stdin. A source that cannot be read gives one Manifest
// with Err.
func readManifests(files []string, stdin io.Reader) []Manifest {
	var out []Manifest
	for _, f := range files {
		if f == "-" {
			data, err := io.ReadAll(io.LimitReader(stdin, maxManifestSize+1))
			if err == nil && len(data) > maxManifestSize {
				err = fmt.Errorf("more than %d bytes", maxManifestSize)
			}
			if err != nil {
				out = append(out, Manifest{Source: "stdin", Err: fmt.Errorf("reading stdin: %w", err)})
				continue
			}
			out = append(out, SplitManifests("stdin", data)...)
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			out = append(out, Manifest{Source: f, Err: err})
			continue
		}
		paths := []string{f}
		if st.IsDir() {
			paths = nil
			entries, err := os.ReadDir(f)
			if err != nil {
				out = append(out, Manifest{Source: f, Err: err})
				continue
			}
			for _, e := range entries {
				ext := strings.ToLower(filepath.Ext(e.Name()))
				if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
					paths = append(paths, filepath.Join(f, e.Name()))
				}
			}
			sort.Strings(paths)
		}
		for _, p := range paths {
			data, err := readFileLimited(p)
			if err != nil {
				out = append(out, Manifest{Source: p, Err: err})
				continue
			}
			out = append(out, SplitManifests(p, data)...)
		}
	}
	return out
}

func readFileLimited(p string) ([]byte, error) {
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, maxManifestSize)
	}
	return data, nil
}

// manifestError renders a local (not server) problem with a manifest.
func manifestError(m *Manifest) error {
	if m.Index == 0 {
		return fmt.Errorf("%s: %w", m.Source, m.Err)
	}
	return fmt.Errorf("%s: %w", m.Where(), m.Err)
}
