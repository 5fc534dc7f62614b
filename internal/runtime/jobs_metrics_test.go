package runtime

import (
	"context"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestJobMetrics: a job counts as running while its function runs, and its duration is
// observed once it ends, under the job's name.
func TestJobMetrics(t *testing.T) {
	const name = "test-job-metrics"
	running := func() float64 {
		var m dto.Metric
		if err := jobsRunning.WithLabelValues(name).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	finished := func() uint64 {
		var m dto.Metric
		if err := jobSeconds.WithLabelValues(name).(interface{ Write(*dto.Metric) error }).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	j := NewJobs()
	release, ended := make(chan struct{}), make(chan struct{})
	if !j.Start("k", name, func(ctx context.Context) { <-release }, func() { close(ended) }) {
		t.Fatal("the job did not start")
	}
	if got := running(); got != 1 {
		t.Errorf("running while the job runs: %v, want 1", got)
	}
	if got := finished(); got != 0 {
		t.Errorf("finished before the job ended: %d", got)
	}
	close(release)
	<-ended
	if got := running(); got != 0 {
		t.Errorf("running after the job ended: %v, want 0", got)
	}
	if got := finished(); got != 1 {
		t.Errorf("finished jobs observed: %d, want 1", got)
	}
}
