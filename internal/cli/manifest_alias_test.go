package cli

import (
	"strings"
	"testing"
)

// TestSplitManifestsAliases: aliases in a local manifest are expanded as before while the
// expansion stays small; a document whose aliases would expand past the limit, or refer to
// themselves, is an error naming the problem (and is not expanded), and does not hide the
// other documents.
func TestSplitManifestsAliases(t *testing.T) {
	ok := "base: &b {cores: 1}\nkind: VirtualMachine\nmetadata: {name: vm1}\nspec:\n  cpu: *b\n"
	var laughs strings.Builder
	laughs.WriteString("kind: Secret\nl0: &l0 \"lololololo\"\n")
	for i := 1; i <= 9; i++ {
		laughs.WriteString("l" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [")
		laughs.WriteString(strings.TrimSuffix(strings.Repeat("*l"+string(rune('0'+i-1))+",", 10), ","))
		laughs.WriteString("]\n")
	}
	big := "kind: Secret\na: &a " + strings.Repeat("x", 1<<20) + "\nb: [" + strings.TrimSuffix(strings.Repeat("*a,", 40), ",") + "]\n"
	data := ok + "---\n" + laughs.String() + "---\n" + big + "---\nkind: Secret\nm: &m [*m]\n---\nkind: Secret\nmetadata: {name: last}\n"
	ms := SplitManifests("bomb.yaml", []byte(data))
	if len(ms) != 5 {
		t.Fatalf("got %d manifests, want 5: %+v", len(ms), ms)
	}
	if ms[0].Err != nil {
		t.Fatalf("small aliases: %v", ms[0].Err)
	}
	if spec, _ := ms[0].Object["spec"].(map[string]any); spec == nil || spec["cpu"] == nil {
		t.Errorf("the alias was not expanded: %v", ms[0].Object)
	}
	for i, want := range []string{"would expand it to more than 16 MiB", "would expand it to more than 16 MiB", "recursive YAML alias"} {
		m := ms[i+1]
		if m.Err == nil || !strings.Contains(m.Err.Error(), want) {
			t.Errorf("document %d: err %v, want %q", i+2, m.Err, want)
		}
	}
	if !strings.Contains(ms[1].Err.Error(), "*l0 at line") {
		t.Errorf("document 2: the error does not name the first alias: %v", ms[1].Err)
	}
	if ms[4].Err != nil || objName(ms[4].Object) != "last" {
		t.Errorf("the document after the bombs: %+v", ms[4])
	}
}
