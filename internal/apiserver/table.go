package apiserver

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/printers"
	"github.com/rakhsh/rakhsh/internal/store"
)

// Server-side printing: a client that sends Accept: application/json;as=Table;g=meta.k8s.io;v=v1
// (kubectl get does) gets a meta.k8s.io/v1 Table with the same columns as `rakhsh get`.

// wantsTable says whether the request asks for a Table.
func wantsTable(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if strings.Contains(part, "as=Table") && (strings.Contains(part, "g=meta.k8s.io") || !strings.Contains(part, "g=")) {
			return true
		}
	}
	return false
}

type tableColumn struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Format      string `json:"format"`
	Description string `json:"description"`
	Priority    int    `json:"priority"`
}

type tableRow struct {
	Cells  []any          `json:"cells"`
	Object map[string]any `json:"object"`
}

type table struct {
	Kind       string         `json:"kind"`
	APIVersion string         `json:"apiVersion"`
	Metadata   map[string]any `json:"metadata"`
	Columns    []tableColumn  `json:"columnDefinitions"`
	Rows       []tableRow     `json:"rows"`
}

func tableColumns(k *v1alpha1.KindInfo) []tableColumn {
	cols := []tableColumn{{Name: "Name", Type: "string", Format: "name", Description: "the object's metadata.name"}}
	for _, c := range k.Columns {
		col := tableColumn{Name: c.Name, Type: "string", Description: c.Path}
		if c.Wide {
			col.Priority = 1
		}
		cols = append(cols, col)
	}
	return cols
}

// newTable makes a Table of stored objects of kind k.
func newTable(k *v1alpha1.KindInfo, kvs []store.KV, meta map[string]any, now time.Time) ([]byte, error) {
	t := table{Kind: "Table", APIVersion: "meta.k8s.io/v1", Metadata: meta, Columns: tableColumns(k), Rows: []tableRow{}}
	for _, kv := range kvs {
		var obj map[string]any
		dec := json.NewDecoder(strings.NewReader(string(withRV(kv.Value, kv.ModRevision, kv.CreateRevision))))
		dec.UseNumber()
		if err := dec.Decode(&obj); err != nil {
			return nil, err
		}
		t.Rows = append(t.Rows, rowOf(k, obj, now))
	}
	return json.Marshal(t)
}

func rowOf(k *v1alpha1.KindInfo, obj map[string]any, now time.Time) tableRow {
	md, _ := obj["metadata"].(map[string]any)
	name, _ := md["name"].(string)
	cells := []any{name}
	for _, c := range k.Columns {
		v, ok := printers.LookupPath(obj, c.Path)
		cells = append(cells, printers.FormatCell(v, ok, c.Format, now))
	}
	return tableRow{Cells: cells, Object: map[string]any{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": md}}
}

// tableMeta is a Table's list metadata.
func tableMeta(rev int64, cont string) map[string]any {
	m := map[string]any{"resourceVersion": strconv.FormatInt(rev, 10)}
	if cont != "" {
		m["continue"] = cont
	}
	return m
}
