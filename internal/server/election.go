package server

import (
	"log/slog"

	"github.com/rakhsh/rakhsh/internal/apiserver"
	"github.com/rakhsh/rakhsh/internal/leader"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/etcd"
)

// newElector returns who decides when this process runs the controllers: an etcd lease
// election on an etcd store, and on bolt this process alone, always.
func newElector(cfg Config, st store.Store, apiAddr string, log *slog.Logger) leader.Elector {
	m := leader.Member{Name: cfg.NodeName, APIAddress: apiAddr, Version: apiserver.Version, Controllers: !cfg.NoControllers, Agent: !cfg.NoAgent}
	if es, ok := st.(*etcd.Store); ok {
		return &leader.Etcd{Client: es.Client(), Prefix: es.Prefix(), Member: m, TTL: cfg.LeaderLeaseTTL,
			NoticeDelay: cfg.leaderNoticeDelay, Log: log.With("component", "leader-election")}
	}
	return &leader.Single{Member: m}
}
