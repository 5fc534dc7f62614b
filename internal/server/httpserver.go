package server

import (
	"net/http"
	"time"
)

// newHTTPServer makes the HTTP server of one listener: the local socket, or the TCP listener
// that remote clients and agents use (remote).
func newHTTPServer(h http.Handler, remote bool) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
}
