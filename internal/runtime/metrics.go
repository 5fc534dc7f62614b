package runtime

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The queues' series are process-wide: every controller of a serve process and its node
// agent run their queues here, under their queue's name (scheduler, vm, agent, ...).
var (
	reconcileSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rakhsh_controller_reconcile_duration_seconds",
		Help:    "Time of one reconcile, by queue (a controller's name, or agent for the node agent) and result (success, error).",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"queue", "result"})
	liveQueues sync.Map // *Queue → struct{}: the queues whose workers run
	queueDepth = prometheus.NewDesc("rakhsh_controller_queue_depth",
		"Keys waiting in a queue for a worker (retries waiting for their backoff not counted).", []string{"queue"}, nil)
	queueRetries = prometheus.NewDesc("rakhsh_controller_queue_retrying",
		"Keys of a queue whose last reconcile failed and that wait for their retry.", []string{"queue"}, nil)
	// Background jobs (Jobs): image imports by data source type (HTTP, ContainerImage,
	// ObjectRef, Upload) and disk uploads (upload).
	jobSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "rakhsh_job_duration_seconds",
		Help:    "Time of a finished background job (an image import by data source type, a disk upload), from its start to its end, cancelled ones included.",
		Buckets: []float64{0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
	}, []string{"job"})
	jobsRunning = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "rakhsh_jobs_running",
		Help: "Background jobs running now (image imports by data source type, disk uploads).",
	}, []string{"job"})
)

type queueCollector struct{}

func (queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- queueDepth; ch <- queueRetries }

func (queueCollector) Collect(ch chan<- prometheus.Metric) {
	depth, retry := map[string]int{}, map[string]int{}
	liveQueues.Range(func(k, _ any) bool {
		q := k.(*Queue)
		q.mu.Lock()
		depth[q.Name] += len(q.queue)
		retry[q.Name] += len(q.failures)
		q.mu.Unlock()
		return true
	})
	for name, n := range depth {
		ch <- prometheus.MustNewConstMetric(queueDepth, prometheus.GaugeValue, float64(n), name)
		ch <- prometheus.MustNewConstMetric(queueRetries, prometheus.GaugeValue, float64(retry[name]), name)
	}
}

// MetricsCollectors are the queues' collectors (queue depth, retries, reconcile durations),
// for the process's /metrics. They may be registered in several registries.
func MetricsCollectors() []prometheus.Collector {
	return []prometheus.Collector{reconcileSeconds, queueCollector{}, jobSeconds, jobsRunning}
}

// observeReconcile records one reconcile of queue name.
func observeReconcile(name string, start time.Time, err error) {
	result := "success"
	if err != nil {
		result = "error"
	}
	reconcileSeconds.WithLabelValues(name, result).Observe(time.Since(start).Seconds())
}
