package apiserver

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/labels"
	"github.com/rakhsh/rakhsh/internal/store"
)

func storeListLimit(n int64) store.ListOptions { return store.ListOptions{Limit: n} }

func lastSegment(k string) string { return k[strings.LastIndexByte(k, '/')+1:] }

// continueToken is what a list's continue string holds: the last key returned.
type continueToken struct {
	Key string `json:"k"`
	Rev int64  `json:"r"`
}

func encodeContinue(t continueToken) string {
	data, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(data)
}

func decodeContinue(s, pfx string) (continueToken, error) {
	var t continueToken
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(data, &t)
	}
	if err != nil || !strings.HasPrefix(t.Key, pfx) {
		return t, errs.New(errs.ErrBadRequest, "the continue token is not valid for this list: start the list again without it")
	}
	return t, nil
}

// labelsOf reads metadata.labels of a stored object without decoding the rest.
func labelsOf(data []byte) map[string]string {
	var o struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(data, &o)
	return o.Metadata.Labels
}

// selector is what a list or watch selects by: a label selector and field requirements.
type selector struct {
	labels labels.Selector
	fields []fieldReq
	// visible, when set, says which keys the caller may see (listFilter): a user's list or
	// watch across projects keeps only their projects' objects.
	visible func(key string) bool
}

// fieldReq is one term of a fieldSelector: a dotted path into the object (metadata.name,
// metadata.namespace, spec.nodeName, status.nodeName, status.phase, ...), = or !=, a value.
type fieldReq struct {
	path  []string
	not   bool
	value string
}

func (s selector) Empty() bool { return s.labels.Empty() && len(s.fields) == 0 }

// Matches says whether the stored object data is selected.
func (s selector) Matches(data []byte) bool {
	if !s.labels.Empty() && !s.labels.Matches(labelsOf(data)) {
		return false
	}
	if len(s.fields) == 0 {
		return true
	}
	var obj map[string]any
	if json.Unmarshal(data, &obj) != nil {
		return false
	}
	for _, f := range s.fields {
		if (labels.FieldValue(obj, f.path) == f.value) == f.not {
			return false
		}
	}
	return true
}

func parseSelector(r *http.Request) (selector, error) {
	sel, err := labels.Parse(r.URL.Query().Get("labelSelector"))
	if err != nil {
		return selector{}, errs.New(errs.ErrBadRequest, "%v", err)
	}
	out := selector{labels: sel}
	fs := strings.TrimSpace(r.URL.Query().Get("fieldSelector"))
	if fs == "" {
		return out, nil
	}
	for _, term := range strings.Split(fs, ",") {
		var f fieldReq
		var key string
		switch {
		case strings.Contains(term, "!="):
			key, f.value, _ = strings.Cut(term, "!=")
			f.not = true
		case strings.Contains(term, "=="):
			key, f.value, _ = strings.Cut(term, "==")
		case strings.Contains(term, "="):
			key, f.value, _ = strings.Cut(term, "=")
		default:
			return selector{}, errs.New(errs.ErrBadRequest, "fieldSelector term %q: use FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE", term)
		}
		key = strings.TrimSpace(key)
		f.value = strings.TrimSpace(f.value)
		f.path = strings.Split(key, ".")
		for _, seg := range f.path {
			if seg == "" {
				return selector{}, errs.New(errs.ErrBadRequest, "fieldSelector term %q: the field %q is not a dotted path such as metadata.name or status.nodeName", term, key)
			}
		}
		out.fields = append(out.fields, f)
	}
	return out, nil
}

// requestSelector is the selector of a list or watch: the request's label and field selectors,
// and what the caller may see of t.
func (s *Server) requestSelector(r *http.Request, t target) (selector, error) {
	sel, err := parseSelector(r)
	if err == nil {
		sel.visible, err = s.listFilter(r.Context(), t)
	}
	return sel, err
}

func (s *Server) serveList(w http.ResponseWriter, r *http.Request, t target) {
	sel, err := s.requestSelector(r, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	var limit int64
	if l := q.Get("limit"); l != "" {
		limit, err = strconv.ParseInt(l, 10, 64)
		if err != nil || limit < 0 {
			s.writeError(w, r, errs.New(errs.ErrBadRequest, "limit %q must be a non-negative integer", l))
			return
		}
	}
	pfx := prefix(t.st.Info, t.namespace)
	opts := store.ListOptions{}
	if c := q.Get("continue"); c != "" {
		tok, err := decodeContinue(c, pfx)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		opts.After = tok.Key
		opts.Revision = tok.Rev
	}
	items, rev, more, err := s.listItems(r.Context(), pfx, opts, limit, sel)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if wantsTable(r) {
		cont := ""
		if more && len(items) > 0 {
			cont = encodeContinue(continueToken{Key: items[len(items)-1].Key, Rev: rev})
		}
		data, err := newTable(t.st.Info, items, tableMeta(rev, cont), s.now())
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeRaw(w, http.StatusOK, data)
		return
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw.WriteString(`{"apiVersion":"` + v1alpha1.APIVersion + `","kind":"` + t.st.Info.Kind + `List","metadata":{"resourceVersion":"` + strconv.FormatInt(rev, 10) + `"`)
	if more && len(items) > 0 {
		bw.WriteString(`,"continue":"` + encodeContinue(continueToken{Key: items[len(items)-1].Key, Rev: rev}) + `"`)
	}
	bw.WriteString(`},"items":[`)
	for i, kv := range items {
		if i > 0 {
			bw.WriteByte(',')
		}
		writeWithRV(bw, kv.Value, kv.ModRevision, kv.CreateRevision)
	}
	bw.WriteString("]}\n")
	_ = bw.Flush()
}

// listPageSize is how many objects one store read returns while serving a list.
const listPageSize = 1000

// listItems pages through the store until limit matching items are found (0: all).
func (s *Server) listItems(ctx context.Context, pfx string, opts store.ListOptions, limit int64, sel selector) ([]store.KV, int64, bool, error) {
	var out []store.KV
	var rev int64
	for {
		o := opts
		// Read big lists in pages from one snapshot, so no single store call holds them all.
		o.Limit = listPageSize
		if limit > 0 {
			o.Limit = limit - int64(len(out))
			if !sel.Empty() && o.Limit < 100 {
				o.Limit = 100
			}
		}
		res, err := s.store.List(ctx, pfx, o)
		if err != nil {
			if errors.Is(err, errs.ErrCompacted) && opts.Revision != 0 {
				return nil, 0, false, errs.New(errs.ErrCompacted, "the continue token has expired (the store no longer keeps revision %d): start the list again", opts.Revision)
			}
			return nil, 0, false, err
		}
		if rev == 0 {
			rev = res.Revision
			// Later pages read the same snapshot.
			opts.Revision = rev
		}
		for i, kv := range res.KVs {
			if sel.visible != nil && !sel.visible(kv.Key) {
				continue
			}
			if !sel.Empty() && !sel.Matches(kv.Value) {
				continue
			}
			out = append(out, kv)
			if limit > 0 && int64(len(out)) == limit {
				more := res.More || i < len(res.KVs)-1
				return out, rev, more, nil
			}
		}
		if !res.More || len(res.KVs) == 0 {
			return out, rev, false, nil
		}
		opts.After = res.KVs[len(res.KVs)-1].Key
	}
}

// serveWatch streams newline-delimited watch events. Without a resourceVersion (or with "0")
// it first sends the current objects as ADDED, then changes. With a resourceVersion it
// replays changes after it; a version the store no longer keeps ends the stream with an
// ERROR event carrying a Status of reason Expired (code 410): list again and watch from the
// list's resourceVersion.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request, t target) {
	sel, err := s.requestSelector(r, t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	pfx := prefix(t.st.Info, t.namespace)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	s.metrics.watches.Inc()
	defer s.metrics.watches.Dec()

	rvText := r.URL.Query().Get("resourceVersion")
	var from int64
	var initial []store.KV
	if rvText == "" || rvText == "0" {
		items, rev, _, err := s.listItems(ctx, pfx, store.ListOptions{}, 0, sel)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		initial, from = items, rev
	} else {
		from, err = strconv.ParseInt(rvText, 10, 64)
		if err != nil || from < 0 {
			s.writeError(w, r, errs.New(errs.ErrBadRequest, "resourceVersion %q must be a non-negative integer", rvText))
			return
		}
	}
	events := s.store.Watch(ctx, pfx, from)
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	flush := func() bool {
		if err := bw.Flush(); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	asTable := wantsTable(r)
	// tableOf turns a watched object into a one-row Table (kubectl get -w asks for Tables).
	tableOf := func(kv store.KV) []byte {
		data, err := newTable(t.st.Info, []store.KV{kv}, tableMeta(kv.ModRevision, ""), s.now())
		if err != nil {
			return withRV(kv.Value, kv.ModRevision, kv.CreateRevision)
		}
		return data
	}
	for _, kv := range initial {
		if asTable {
			writeEvent(bw, v1alpha1.WatchAdded, tableOf(kv))
			continue
		}
		bw.WriteString(`{"type":"` + v1alpha1.WatchAdded + `","object":`)
		writeWithRV(bw, kv.Value, kv.ModRevision, kv.CreateRevision)
		bw.WriteString("}\n")
	}
	if !flush() {
		return
	}
	last := from
	ticker := time.NewTicker(s.bookmark)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			bm := `{"apiVersion":"` + v1alpha1.APIVersion + `","kind":"` + t.st.Info.Kind + `","metadata":{"resourceVersion":"` + strconv.FormatInt(last, 10) + `"}}`
			writeEvent(bw, v1alpha1.WatchBookmark, []byte(bm))
			if !flush() {
				return
			}
		case res, ok := <-events:
			if !ok {
				return
			}
			if res.Err != nil {
				st := statusFor(res.Err)
				if errors.Is(res.Err, errs.ErrCompacted) {
					st.Message = "too old resource version: " + strconv.FormatInt(from, 10) + ": list again and watch from the list's resourceVersion"
				}
				data, _ := json.Marshal(st)
				writeEvent(bw, v1alpha1.WatchError, data)
				flush()
				return
			}
			for _, ev := range res.Events {
				last = ev.KV.ModRevision
				if sel.visible != nil && !sel.visible(ev.KV.Key) {
					continue
				}
				typ, obj := translate(ev, sel)
				if typ == "" {
					continue
				}
				if asTable {
					val := ev.KV.Value
					if ev.Type == store.Delete {
						val = ev.PrevValue
					}
					obj = tableOf(store.KV{Key: ev.KV.Key, Value: val, ModRevision: ev.KV.ModRevision, CreateRevision: ev.KV.CreateRevision})
				}
				writeEvent(bw, typ, obj)
			}
			if !flush() {
				return
			}
		}
	}
}

// translate maps a store event to a watch event type and object, applying a label selector
// the way Kubernetes does: an object leaving the selection is DELETED, one entering ADDED.
func translate(ev store.Event, sel selector) (string, []byte) {
	switch ev.Type {
	case store.Delete:
		if ev.PrevValue == nil || (!sel.Empty() && !sel.Matches(ev.PrevValue)) {
			return "", nil
		}
		return v1alpha1.WatchDeleted, withRV(ev.PrevValue, ev.KV.ModRevision, ev.KV.CreateRevision)
	case store.Put:
		obj := withRV(ev.KV.Value, ev.KV.ModRevision, ev.KV.CreateRevision)
		if sel.Empty() {
			if ev.Created {
				return v1alpha1.WatchAdded, obj
			}
			return v1alpha1.WatchModified, obj
		}
		now := sel.Matches(ev.KV.Value)
		before := !ev.Created && ev.PrevValue != nil && sel.Matches(ev.PrevValue)
		switch {
		case now && before:
			return v1alpha1.WatchModified, obj
		case now:
			return v1alpha1.WatchAdded, obj
		case before:
			return v1alpha1.WatchDeleted, obj
		}
	}
	return "", nil
}

func writeEvent(bw *bufio.Writer, typ string, obj []byte) {
	bw.WriteString(`{"type":"` + typ + `","object":`)
	bw.Write(obj)
	bw.WriteString("}\n")
}
