package client

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/coder/websocket"
)

// DialStream opens a websocket to a streaming subresource (a VM's console or vnc) and returns
// it as a byte stream. A server that cannot be reached is failed over like a request.
func (c *Client) DialStream(ctx context.Context, resource, namespace, name, sub string) (net.Conn, error) {
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	var conn net.Conn
	err := c.each(ctx, func(ep *endpoint) (bool, error) {
		u := ep.base + Path(resource, namespace, name, sub)
		switch {
		case len(u) > 5 && u[:5] == "https":
			u = "wss" + u[5:]
		default:
			u = "ws" + u[4:]
		}
		ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: ep.stream, HTTPHeader: h, Subprotocols: []string{"binary"}})
		if err != nil {
			if resp != nil && resp.StatusCode >= 300 {
				data := make([]byte, 4096)
				n, _ := resp.Body.Read(data)
				resp.Body.Close()
				return resp.StatusCode == http.StatusServiceUnavailable, decodeError(resp.StatusCode, data[:n])
			}
			return unreachable(err), fmt.Errorf("opening %s of %s: %w", sub, name, err)
		}
		ws.SetReadLimit(1 << 20)
		conn = websocket.NetConn(context.WithoutCancel(ctx), ws, websocket.MessageBinary)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return conn, nil
}
