// Package monitoring holds Rakhsh's Prometheus alert rules (prometheus/) and Grafana
// dashboards (grafana/); its tests check them with promtool and against docs/metrics.md.
package monitoring
