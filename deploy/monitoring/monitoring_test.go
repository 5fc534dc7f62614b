package monitoring

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtool returns the path of promtool; the test fails without it (scripts/install-deps.sh
// installs Debian's prometheus package, which has it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool missing: install Debian's prometheus package (scripts/install-deps.sh)")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// documented returns the metric names docs/metrics.md lists.
func documented(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile("`((?:rakhsh|go|process)_[a-z_]+)").FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = true
	}
	return out
}

var metricName = regexp.MustCompile(`\b(rakhsh_[a-z0-9_]+)\b\s*([=!]?)`)

// metricsOf returns the Rakhsh metric names an expression selects (label names such as
// rakhsh_control_plane, followed by a matcher, are skipped), without the _bucket, _sum and
// _count of histograms.
func metricsOf(expr string) []string {
	var out []string
	for _, m := range metricName.FindAllStringSubmatch(expr, -1) {
		if m[2] != "" {
			continue
		}
		n := m[1]
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(n, suf) && strings.HasSuffix(strings.TrimSuffix(n, suf), "_seconds") {
				n = strings.TrimSuffix(n, suf)
			}
		}
		out = append(out, n)
	}
	return out
}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

type ruleTests struct {
	RuleFiles []string `json:"rule_files"`
	Tests     []struct {
		Name          string `json:"name"`
		AlertRuleTest []struct {
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// runbookAnchors are the anchors of docs/runbooks.md's headings (GitHub's rule: lower case,
// spaces to dashes, punctuation dropped).
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../docs/runbooks.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		h, ok := strings.CutPrefix(line, "## ")
		if !ok {
			continue
		}
		var a strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(h)) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				a.WriteRune(r)
			case r == ' ':
				a.WriteRune('-')
			}
		}
		out[a.String()] = true
	}
	return out
}

// TestAlertRules: promtool accepts the rules and their unit tests pass; every alert is fired
// by a unit test, links a runbook section that exists and names only documented metrics.
func TestAlertRules(t *testing.T) {
	dir := "prometheus"
	out := runPromtool(t, dir, "check", "rules", "rakhsh-alerts.yml")
	t.Log(strings.TrimSpace(out))
	out = runPromtool(t, dir, "test", "rules", "rakhsh-alerts.test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
	var rules ruleFile
	readYAML(t, filepath.Join(dir, "rakhsh-alerts.yml"), &rules)
	var tests ruleTests
	readYAML(t, filepath.Join(dir, "rakhsh-alerts.test.yml"), &tests)
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	docs, anchors := documented(t), runbookAnchors(t)
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fired[r.Alert] {
				t.Errorf("alert %s: no unit test in rakhsh-alerts.test.yml fires it", r.Alert)
			}
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
			}
			u := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(u, "docs/runbooks.md#")
			if !ok || !anchors[anchor] || anchor != strings.ToLower(r.Alert) {
				t.Errorf("alert %s: runbook_url %q: want docs/runbooks.md#%s, a section of docs/runbooks.md", r.Alert, u, strings.ToLower(r.Alert))
			}
			for _, m := range metricsOf(r.Expr) {
				if !docs[m] {
					t.Errorf("alert %s names metric %s, which docs/metrics.md does not list", r.Alert, m)
				}
			}
		}
	}
	if alerts < 8 {
		t.Errorf("%d alerts, want at least the 8 of the issue", alerts)
	}
}

// dashboard is the part of Grafana's dashboard JSON model these dashboards use; unknown
// fields are refused, so a misspelt field fails here rather than in Grafana.
type dashboard struct {
	UID           string                    `json:"uid"`
	Title         string                    `json:"title"`
	Description   string                    `json:"description"`
	Tags          []string                  `json:"tags"`
	SchemaVersion int                       `json:"schemaVersion"`
	Version       int                       `json:"version"`
	Editable      bool                      `json:"editable"`
	GraphTooltip  int                       `json:"graphTooltip"`
	Refresh       string                    `json:"refresh"`
	Time          struct{ From, To string } `json:"time"`
	Timezone      string                    `json:"timezone"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []any `json:"list"`
	} `json:"annotations"`
	Links  []any   `json:"links"`
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type variable struct {
	Name       string      `json:"name"`
	Label      string      `json:"label"`
	Type       string      `json:"type"`
	Datasource *datasource `json:"datasource,omitempty"`
	Query      any         `json:"query"`
	Definition string      `json:"definition,omitempty"`
	Refresh    int         `json:"refresh,omitempty"`
	Sort       int         `json:"sort,omitempty"`
	Multi      bool        `json:"multi,omitempty"`
	IncludeAll bool        `json:"includeAll,omitempty"`
	Current    any         `json:"current"`
	Hide       int         `json:"hide"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description,omitempty"`
	Datasource  *datasource `json:"datasource,omitempty"`
	Collapsed   bool        `json:"collapsed,omitempty"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID        string      `json:"refId"`
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets,omitempty"`
	FieldConfig any     `json:"fieldConfig,omitempty"`
	Options     any     `json:"options,omitempty"`
	Panels      []panel `json:"panels,omitempty"`
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*([a-z_]+)\)$`)

// TestDashboards: each dashboard decodes into the dashboard model (schema check), has a
// unique uid, unique panel ids inside the 24-column grid, and queries that promtool parses
// and that name only documented metrics.
func TestDashboards(t *testing.T) {
	files, _ := filepath.Glob("grafana/*.json")
	if len(files) < 4 {
		t.Fatalf("%d dashboards in grafana/, want cluster, node, VM and project", len(files))
	}
	docs := documented(t)
	uids := map[string]string{}
	var exprs []string
	var where []string
	titles := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var d dashboard
		if err := dec.Decode(&d); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 {
			t.Errorf("%s: uid %q, title %q, schemaVersion %d, %d panels: want all set", f, d.UID, d.Title, d.SchemaVersion, len(d.Panels))
		}
		if o, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %s is also %s's", f, d.UID, o)
		}
		uids[d.UID] = f
		titles[strings.ToLower(d.Title)] = true
		vars := map[string]bool{"__rate_interval": true, "__interval": true}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
			switch v.Type {
			case "datasource":
				if v.Query != "prometheus" {
					t.Errorf("%s: variable %s: datasource query %v, want prometheus", f, v.Name, v.Query)
				}
			case "query":
				q, _ := v.Query.(map[string]any)
				s, _ := q["query"].(string)
				m := labelValues.FindStringSubmatch(s)
				if m == nil {
					t.Errorf("%s: variable %s: query %q, want label_values(SELECTOR, LABEL)", f, v.Name, s)
					continue
				}
				exprs, where = append(exprs, m[1]), append(where, f+" variable "+v.Name)
			default:
				t.Errorf("%s: variable %s has type %q", f, v.Name, v.Type)
			}
		}
		ids := map[int]bool{}
		for _, p := range d.Panels {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d twice", f, p.ID)
			}
			ids[p.ID] = true
			g := p.GridPos
			if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: panel %q outside the grid: %+v", f, p.Title, g)
			}
			switch p.Type {
			case "row":
				continue
			case "timeseries", "stat", "gauge", "table", "bargauge":
			default:
				t.Errorf("%s: panel %q has type %q", f, p.Title, p.Type)
			}
			if p.Title == "" || len(p.Targets) == 0 || p.Datasource == nil || p.Datasource.Type != "prometheus" {
				t.Errorf("%s: panel %d %q: want a title, a Prometheus data source and targets", f, p.ID, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" || tg.RefID == "" {
					t.Errorf("%s: panel %q: a target without expr or refId", f, p.Title)
				}
				for _, v := range regexp.MustCompile(`\$\{?([a-zA-Z_]+)`).FindAllStringSubmatch(tg.Expr, -1) {
					if !vars[v[1]] {
						t.Errorf("%s: panel %q uses $%s, which the dashboard does not define", f, p.Title, v[1])
					}
				}
				exprs, where = append(exprs, tg.Expr), append(where, fmt.Sprintf("%s panel %q", f, p.Title))
			}
		}
	}
	for _, want := range []string{"rakhsh / cluster", "rakhsh / node", "rakhsh / vm", "rakhsh / project"} {
		if !titles[want] {
			t.Errorf("no dashboard titled %q", want)
		}
	}
	// Every expression parses: promtool checks them as recording rules, with the dashboard
	// variables given values.
	vals := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "${datasource}", "x", "$project", "p", "$node", "n", "$vm", "v")
	var rf strings.Builder
	rf.WriteString("groups:\n- name: dashboards\n  rules:\n")
	used := map[string]bool{}
	for i, e := range exprs {
		q, _ := json.Marshal(vals.Replace(e))
		fmt.Fprintf(&rf, "  - record: dashboard:expr%d\n    expr: %s\n", i, q)
		for _, m := range metricsOf(e) {
			used[m] = true
			if !docs[m] {
				t.Errorf("%s names metric %s, which docs/metrics.md does not list", where[i], m)
			}
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboards.yml"), []byte(rf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out := runPromtool(t, dir, "check", "rules", "dashboards.yml")
	if !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", len(exprs))) {
		t.Fatalf("promtool check of the dashboards' %d expressions:\n%s", len(exprs), out)
	}
	var names []string
	for m := range used {
		names = append(names, m)
	}
	sort.Strings(names)
	t.Logf("%d expressions parse; %d metrics used: %s", len(exprs), len(names), strings.Join(names, " "))
}
