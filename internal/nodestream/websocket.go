package nodestream

import (
	"context"
	"io"
	"net/http"

	"github.com/coder/websocket"
)

// Subprotocols are the websocket subprotocols console and VNC streams accept.
var Subprotocols = []string{"binary", "base64"}

// ServeWebsocket upgrades the request to a websocket and copies bytes both ways between it
// and backend until either side ends or ctx does. The upgrade checks that a browser's Origin
// matches the Host it talks to; a client that sends no Origin (the CLI, an API server) is not
// a browser and passes. backend is closed on return.
func ServeWebsocket(ctx context.Context, w http.ResponseWriter, r *http.Request, backend io.ReadWriteCloser) {
	defer backend.Close()
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: Subprotocols})
	if err != nil {
		return
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	go func() {
		_, _ = io.Copy(backend, nc)
		cancel()
	}()
	go func() {
		<-ctx.Done()
		backend.Close()
	}()
	_, _ = io.Copy(nc, backend)
	ws.Close(websocket.StatusNormalClosure, "")
}
