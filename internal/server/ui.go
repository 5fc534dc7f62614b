package server

import (
	"log/slog"
	"net/http"

	"github.com/rakhsh/rakhsh/internal/ui"
)

// withUI serves the web UI at /ui/ on the TCP listener in front of the API handler: a browser
// logs in with an API token and its session cookie is turned into that token on every API
// request (see internal/ui). A user with a local password logs in with it instead: the
// session then holds a login token of that user.
func withUI(api http.Handler, oidc *ui.OIDCLogin, log *slog.Logger) http.Handler {
	sessions := ui.NewSessions()
	return ui.New(ui.Config{
		OIDC:     oidc,
		API:      api,
		Sessions: sessions,
		Methods: map[string]ui.LoginMethod{
			"token":    ui.TokenLogin{API: api},
			"password": ui.PasswordLogin{API: api, TTL: sessions.MaxAge},
		},
		Log: log.With("component", "ui"),
	})
}
