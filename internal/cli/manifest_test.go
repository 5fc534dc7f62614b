package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type wantDoc struct {
	name  string // metadata.name of an object, or "" for an error
	err   string // substring of the error
	index int
	item  int
	line  int
}

func checkDocs(t *testing.T, got []Manifest, want []wantDoc) {
	t.Helper()
	if len(got) != len(want) {
		for _, m := range got {
			t.Logf("  %s: obj=%v err=%v", m.Where(), m.Object, m.Err)
		}
		t.Fatalf("got %d manifests, want %d", len(got), len(want))
	}
	for i, w := range want {
		m := got[i]
		if (m.Err == nil) == (m.Object == nil) {
			t.Errorf("doc %d: exactly one of Object and Err must be set: %+v", i, m)
		}
		if w.err != "" {
			if m.Err == nil || !strings.Contains(m.Err.Error(), w.err) {
				t.Errorf("doc %d: err = %v, want it to contain %q", i, m.Err, w.err)
			}
		} else if m.Err != nil {
			t.Errorf("doc %d: unexpected error %v", i, m.Err)
		} else if objName(m.Object) != w.name {
			t.Errorf("doc %d: name %q, want %q", i, objName(m.Object), w.name)
		}
		if w.index != 0 && m.Index != w.index {
			t.Errorf("doc %d: index %d, want %d", i, m.Index, w.index)
		}
		if m.Item != w.item {
			t.Errorf("doc %d: item %d, want %d", i, m.Item, w.item)
		}
		if w.line != 0 && m.Line != w.line {
			t.Errorf("doc %d: line %d, want %d", i, m.Line, w.line)
		}
	}
}

func TestSplitManifests(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []wantDoc
	}{
		{"single yaml", "kind: VirtualMachine\nmetadata:\n  name: a\n", []wantDoc{{name: "a", index: 1, line: 1}}},
		{"empty", "", nil},
		{"only separators and comments", "---\n# nothing\n---\n\n...\n", nil},
		{
			name: "multi yaml with empty docs and comments",
			in: "# leading comment\n---\nkind: VirtualDisk\nmetadata:\n  name: d1\n---\n---\n# a comment\n\nkind: VirtualMachine\nmetadata: {name: vm1}\n" +
				"--- # trailing comment\nkind: Secret\nmetadata:\n  name: s1\nstringData:\n  userData: |\n    #cloud-config\n    ---\n    x: 1\n",
			want: []wantDoc{{name: "d1", index: 1, line: 3}, {name: "vm1", index: 2, line: 10}, {name: "s1", index: 3, line: 13}},
		},
		{
			name: "bad yaml in the middle",
			in:   "kind: VirtualDisk\nmetadata:\n  name: d1\n---\nkind: VirtualMachine\nmetadata:\n  name: [unclosed\n---\nkind: VirtualDisk\nmetadata:\n  name: d2\n",
			want: []wantDoc{{name: "d1", index: 1, line: 1}, {err: "invalid YAML", index: 2, line: 5}, {name: "d2", index: 3, line: 9}},
		},
		{
			name: "duplicate key",
			in:   "kind: VirtualDisk\nkind: VirtualDisk\nmetadata: {name: x}\n",
			want: []wantDoc{{err: "invalid YAML", index: 1}},
		},
		{
			name: "not an object, missing kind",
			in:   "- a\n- b\n---\njust a string\n---\nmetadata: {name: nokind}\n",
			want: []wantDoc{{err: "must be an object", index: 1, item: 1}, {err: "must be an object", index: 1, item: 2}, {err: "must be an object", index: 2}, {err: "no kind", index: 3}},
		},
		{
			name: "content on the marker line",
			in:   "--- {kind: Secret, metadata: {name: s1}}\n--- {kind: Secret, metadata: {name: s2}}\n",
			want: []wantDoc{{name: "s1", line: 1}, {name: "s2", line: 2}},
		},
		{
			name: "yaml List",
			in:   "apiVersion: v1\nkind: List\nitems:\n- kind: VirtualDisk\n  metadata: {name: d1}\n- kind: VirtualDisk\n  metadata: {name: d2}\n",
			want: []wantDoc{{name: "d1", index: 1, item: 1}, {name: "d2", index: 1, item: 2}},
		},
		{
			name: "crlf",
			in:   "kind: VirtualDisk\r\nmetadata:\r\n  name: d1\r\n---\r\nkind: VirtualDisk\r\nmetadata:\r\n  name: d2\r\n",
			want: []wantDoc{{name: "d1"}, {name: "d2", line: 5}},
		},
		{"json object", `{"kind":"VirtualMachine","metadata":{"name":"vm1"},"spec":{"cpu":{"cores":2}}}`, []wantDoc{{name: "vm1", index: 1, line: 1}}},
		{
			name: "json List",
			in:   `{"kind":"List","items":[{"kind":"VirtualDisk","metadata":{"name":"d1"}},{"kind":"VirtualDisk","metadata":{"name":"d2"}}]}`,
			want: []wantDoc{{name: "d1", item: 1}, {name: "d2", item: 2}},
		},
		{
			name: "json VirtualDiskList",
			in:   `{"kind":"VirtualDiskList","items":[{"kind":"VirtualDisk","metadata":{"name":"d1"}}]}`,
			want: []wantDoc{{name: "d1", item: 1}},
		},
		{
			name: "json stream",
			in:   "{\"kind\":\"VirtualDisk\",\"metadata\":{\"name\":\"d1\"}}\n\n{\"kind\":\"VirtualDisk\",\"metadata\":{\"name\":\"d2\"}}\n",
			want: []wantDoc{{name: "d1", index: 1, line: 1}, {name: "d2", index: 2, line: 3}},
		},
		{
			name: "json stream broken second value",
			in:   "{\"kind\":\"VirtualDisk\",\"metadata\":{\"name\":\"d1\"}}\n{\"kind\": \"VirtualDisk\",,}\n",
			want: []wantDoc{{name: "d1"}, {err: "invalid JSON at line 2", index: 2, line: 2}},
		},
		{
			name: "json array",
			in:   `[{"kind":"VirtualDisk","metadata":{"name":"d1"}}, 5]`,
			want: []wantDoc{{name: "d1", item: 1}, {err: "must be an object", item: 2}},
		},
		{
			name: "flow yaml that is not json",
			in:   "{kind: VirtualDisk, metadata: {name: d1}}\n---\n{kind: VirtualDisk, metadata: {name: d2}}\n",
			want: []wantDoc{{name: "d1"}, {name: "d2", line: 3}},
		},
		{"bom", "\xef\xbb\xbfkind: VirtualDisk\nmetadata: {name: d1}\n", []wantDoc{{name: "d1"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			checkDocs(t, SplitManifests("test.yaml", []byte(c.in)), c.want)
		})
	}
}

func TestSplitManifestsKeepsNumbersAndLineInErrors(t *testing.T) {
	ms := SplitManifests("f.yaml", []byte("kind: VirtualDisk\nmetadata: {name: d}\nspec:\n  size: 12345678901234567\n---\n\nkind: X\nmetadata:\n  name: a\n   bad: indent\n"))
	if len(ms) != 2 {
		t.Fatalf("got %d manifests", len(ms))
	}
	b, _ := json.Marshal(ms[0].Object)
	if !strings.Contains(string(b), `"size":12345678901234567`) {
		t.Errorf("number lost precision: %s", b)
	}
	if ms[1].Err == nil || !strings.Contains(ms[1].Err.Error(), "line 10") {
		t.Errorf("want the absolute line 10 in the error, got %v", ms[1].Err)
	}
	if got := manifestError(&ms[1]).Error(); !strings.HasPrefix(got, "f.yaml, document 2 (line 7): invalid YAML") {
		t.Errorf("manifestError = %q", got)
	}
}

func TestReadManifests(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("kind: VirtualDisk\nmetadata: {name: b}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "a.json"), []byte(`{"kind":"VirtualDisk","metadata":{"name":"a"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)
	ms := readManifests([]string{dir, "-", filepath.Join(dir, "missing.yaml")}, strings.NewReader("kind: Secret\nmetadata: {name: s}\n"))
	checkDocs(t, ms, []wantDoc{{name: "a", index: 1}, {name: "b", index: 1}, {name: "s", index: 1}, {err: "no such file"}})
	if ms[2].Source != "stdin" {
		t.Errorf("stdin source = %q", ms[2].Source)
	}
}
