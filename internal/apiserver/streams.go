package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/coder/websocket"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/console"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/storage"
)

// VM stream subresources: console (serial, websocket), vnc (websocket), log (plain GET).
const (
	SubConsole = "console"
	SubVNC     = "vnc"
	SubLog     = "log"
)

// vmRunDir finds the run directory of a VM on this host. In the all-in-one mode the API
// server and the node agent share the data dir; a VM bound to another node is not reachable
// from here yet.
func (s *Server) vmRunDir(ctx context.Context, t target) (string, error) {
	if s.dataDir == "" {
		return "", errs.New(errs.ErrUnavailable, "this API server has no local node agent: consoles are not available here")
	}
	kv, err := s.store.Get(ctx, key(t.st.Info, t.namespace, t.name))
	if err != nil {
		return "", s.notFound(err, t)
	}
	var vm struct {
		Metadata v1alpha1.ObjectMeta `json:"metadata"`
		Status   struct {
			Phase    string `json:"phase"`
			NodeName string `json:"nodeName"`
		} `json:"status"`
	}
	if err := json.Unmarshal(kv.Value, &vm); err != nil {
		return "", err
	}
	if err := storage.CheckUID(vm.Metadata.UID); err != nil {
		return "", err
	}
	if s.nodeName != "" && vm.Status.NodeName != "" && vm.Status.NodeName != s.nodeName {
		return "", errs.New(errs.ErrUnavailable, "virtual machine %q runs on node %q, which this server cannot reach yet", t.name, vm.Status.NodeName)
	}
	return storage.VMRunDir(s.dataDir, vm.Metadata.UID), nil
}

func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, t target) {
	if r.Method != http.MethodGet {
		s.methodNotAllowed(w, r, "GET")
		return
	}
	dir, err := s.vmRunDir(r.Context(), t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	switch t.sub {
	case SubLog:
		limit := int64(1 << 20)
		if v := r.URL.Query().Get("limitBytes"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				s.writeError(w, r, errs.New(errs.ErrBadRequest, "limitBytes %q must be a positive integer", v))
				return
			}
			limit = n
		}
		name, what := console.LogFile, "serial log"
		switch src := r.URL.Query().Get("source"); src {
		case "", "serial":
		case "qemu":
			name, what = console.QEMULog, "QEMU log"
		default:
			s.writeError(w, r, errs.New(errs.ErrBadRequest, "source %q: want serial or qemu", src))
			return
		}
		data, err := console.ReadLogs(dir, name, limit)
		if errors.Is(err, os.ErrNotExist) {
			s.writeError(w, r, errs.New(errs.ErrNotFound, "virtual machine %q has no %s yet: it has not run on this node", t.name, what))
			return
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(data)
	case SubConsole, SubVNC:
		sock := filepath.Join(dir, console.ConsoleSocket)
		if t.sub == SubVNC {
			sock = filepath.Join(dir, "vnc.sock")
		}
		backend, err := net.Dial("unix", sock)
		if err != nil {
			s.writeError(w, r, errs.New(errs.ErrUnavailable, "virtual machine %q has no %s now: is it running?", t.name, t.sub))
			return
		}
		defer backend.Close()
		// Accept checks that a browser's Origin matches the Host it talks to; clients that
		// send no Origin (the CLI) are not browsers and pass.
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"binary", "base64"}})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		stop := context.AfterFunc(s.ctx, cancel)
		defer stop()
		nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
		go func() {
			_, _ = io.Copy(backend, nc)
			cancel()
		}()
		_, _ = io.Copy(nc, backend)
		ws.Close(websocket.StatusNormalClosure, "")
	}
}
