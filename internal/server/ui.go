package server

import (
	"log/slog"
	"net/http"

	"github.com/rakhsh/rakhsh/internal/ui"
)

// withUI serves the web UI at /ui/ on the TCP listener in front of the API handler: a browser
// logs in with an API token and its session cookie is turned into that token on every API
// request (see internal/ui).
func withUI(api http.Handler, log *slog.Logger) http.Handler {
	return ui.New(ui.Config{
		API:      api,
		Sessions: ui.NewSessions(),
		Methods:  map[string]ui.LoginMethod{"token": ui.TokenLogin{API: api}},
		Log:      log.With("component", "ui"),
	})
}
