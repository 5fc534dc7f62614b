package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// AnnotationStoredOn names the control-plane members (serve node names, comma-separated)
// whose image store holds an image's file: the serve whose controllers imported it, and every
// serve that fetched it since. The API's image data relay reads it to say which serve it could
// not reach when no live member serves the file.
const AnnotationStoredOn = "virtualization.rakhsh.io/stored-on"

// StoredOn returns the serves an image's annotations say hold its file.
func StoredOn(annotations map[string]string) []string {
	var out []string
	for n := range strings.SplitSeq(annotations[AnnotationStoredOn], ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// Downloader is what a Fetcher needs of the API: *client.Client's Download (a GET of an
// image's data subresource that returns a 200, 206 or 416 answer and an error otherwise).
type Downloader interface {
	Download(ctx context.Context, path string, header http.Header) (*http.Response, error)
}

// FetchRequest names a Ready image whose file a Fetcher brings into the local image store.
type FetchRequest struct {
	// Resource (clustervirtualimages or virtualimages), Namespace and Name name the image.
	Resource, Namespace, Name string
	// What names the image in messages, e.g. `ClusterVirtualImage "ubuntu"`.
	What string
	// UID, SHA256 and Size are the image's metadata.uid, status.sha256 and
	// status.size.storedBytes: the fetched file must have that digest and size.
	UID, SHA256 string
	Size        int64
}

// Fetcher brings the files of Ready images into this serve's image store
// (DATA-DIR/images/UID) from wherever the API serves them: a control-plane member that did
// not import an image (the controllers moved to it after a leader change) gets its file
// through the API's image data relay. Concurrent fetches of one image share one download; a
// download is written to a temporary name, checked against the image's size and sha256, and
// only then renamed into place, so the store never holds a partial or wrong file.
type Fetcher struct {
	Client  Downloader
	DataDir string
	// Annotate and NodeName, when set, add NodeName to the stored-on annotation of each image
	// this fetcher downloaded (AddStoredOn).
	Annotate Patcher
	NodeName string

	mu       sync.Mutex
	inflight map[string]*fetchCall // by image uid
}

// NewFetcher returns a Fetcher for a controller whose API client is c: it downloads when c can
// (a *client.Client; otherwise every fetch fails, saying so) and notes node in the stored-on
// annotation of what it fetched.
func NewFetcher(c Patcher, dataDir, node string) *Fetcher {
	dl, _ := c.(Downloader)
	return &Fetcher{Client: dl, DataDir: dataDir, Annotate: c, NodeName: node}
}

type fetchCall struct {
	done chan struct{}
	err  error
}

// FetchError is a failed fetch: the image, and why (the API's answer names the serves it
// could not reach).
type FetchError struct {
	What string
	Err  error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("the file of %s is not in this serve's image store and fetching it through the API failed: %v", e.What, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// Ensure returns the path of the image's file in the local image store, fetching it first
// when it is not there. fetched says whether this call (or one it waited for) downloaded it.
func (f *Fetcher) Ensure(ctx context.Context, r FetchRequest) (path string, fetched bool, err error) {
	if err := storage.CheckUID(r.UID); err != nil {
		return "", false, err
	}
	path = storage.ImagePath(f.DataDir, r.UID)
	if fileExists(path) {
		return path, false, nil
	}
	if f.Client == nil {
		return "", false, &FetchError{What: r.What, Err: errors.New("this component has no API client to fetch it with")}
	}
	if !storage.IsSHA256Hex(r.SHA256) {
		return "", false, &FetchError{What: r.What, Err: errors.New("the image has no sha256 in its status to check a download against")}
	}
	for {
		f.mu.Lock()
		if fileExists(path) {
			f.mu.Unlock()
			return path, true, nil
		}
		if f.inflight == nil {
			f.inflight = map[string]*fetchCall{}
		}
		call, waiting := f.inflight[r.UID]
		if !waiting {
			call = &fetchCall{done: make(chan struct{})}
			f.inflight[r.UID] = call
		}
		f.mu.Unlock()
		if !waiting {
			call.err = f.fetch(ctx, r, path)
			if call.err == nil && f.Annotate != nil {
				// A failure only leaves this serve out of the relay's error messages: the
				// file is here all the same.
				_ = AddStoredOn(ctx, f.Annotate, r.Resource, r.Namespace, r.Name, r.UID, f.NodeName)
			}
			f.mu.Lock()
			delete(f.inflight, r.UID)
			f.mu.Unlock()
			close(call.done)
			if call.err != nil {
				return "", false, call.err
			}
			return path, true, nil
		}
		select {
		case <-call.done:
		case <-ctx.Done():
			return "", false, ctx.Err()
		}
		if call.err == nil {
			return path, true, nil
		}
		// The download this call waited for was cancelled with its caller's context: start
		// one of its own. Any other failure is this call's answer too.
		if !errors.Is(call.err, context.Canceled) || ctx.Err() != nil {
			return "", false, call.err
		}
	}
}

// fetch downloads r into path through a temporary file.
func (f *Fetcher) fetch(ctx context.Context, r FetchRequest, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), storage.TempPrefix+filepath.Base(path)+"-fetch")
	os.Remove(tmp)
	committed := false
	defer func() {
		if !committed {
			os.Remove(tmp)
		}
	}()
	// An image of the same content already stored here (its content-addressed name) serves
	// as well as a download: a hard link to it.
	if err := os.Link(storage.ContentPath(f.DataDir, r.SHA256), tmp); err == nil {
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		committed = true
		return nil
	}
	resp, err := f.Client.Download(ctx, client.Path(r.Resource, r.Namespace, r.Name, "data"), nil)
	if err != nil {
		return &FetchError{What: r.What, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &FetchError{What: r.What, Err: fmt.Errorf("the API answered %s to a plain GET", resp.Status)}
	}
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	sum := sha256.New()
	var body io.Reader = resp.Body
	if r.Size > 0 {
		body = io.LimitReader(resp.Body, r.Size+1) // one byte more shows a longer file
	}
	n, err := io.CopyBuffer(io.MultiWriter(out, sum), body, make([]byte, 1<<20))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if IsNoSpace(err) {
			return &FetchError{What: r.What, Err: fmt.Errorf("writing it: %w", err)}
		}
		return &FetchError{What: r.What, Err: fmt.Errorf("the download was cut short after %s: %w", HumanBytes(n), err)}
	}
	if r.Size > 0 && n != r.Size {
		return &FetchError{What: r.What, Err: fmt.Errorf("the API sent %d bytes, but the image's status.size.storedBytes is %d; the download was discarded", n, r.Size)}
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != r.SHA256 {
		return &FetchError{What: r.What, Err: fmt.Errorf("the downloaded file has sha256 %s, not the image's %s; it was discarded", got, r.SHA256)}
	}
	if err := storage.Commit(tmp, path); err != nil {
		return err
	}
	committed = true
	// Images of equal content share one file, as for imports.
	if _, err := storage.LinkContent(f.DataDir, path, r.SHA256); err != nil {
		return err
	}
	return nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Patcher is what AddStoredOn needs of the API.
type Patcher interface {
	Get(ctx context.Context, resource, namespace, name string, out any) error
	Patch(ctx context.Context, resource, namespace, name string, patch []byte, out any) error
}

// AddStoredOn adds node to the stored-on annotation of the image (resource is
// clustervirtualimages or virtualimages) if it is the object of uid and does not list node
// yet. The patch carries the resourceVersion read, so two concurrent additions cannot lose
// one another; a conflict is retried.
func AddStoredOn(ctx context.Context, c Patcher, resource, namespace, name, uid, node string) error {
	if node == "" {
		return nil
	}
	var err error
	for range 5 {
		var obj struct {
			Metadata v1alpha1.ObjectMeta `json:"metadata"`
		}
		if err = c.Get(ctx, resource, namespace, name, &obj); err != nil {
			return err
		}
		if obj.Metadata.UID != uid {
			return nil // another object of that name now
		}
		have := StoredOn(obj.Metadata.Annotations)
		if slices.Contains(have, node) {
			return nil
		}
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
			"annotations":     map[string]string{AnnotationStoredOn: strings.Join(append(have, node), ",")},
			"resourceVersion": obj.Metadata.ResourceVersion}})
		if err = c.Patch(ctx, resource, namespace, name, patch, nil); err == nil || !client.IsConflict(err) {
			return err
		}
	}
	return err
}
