package runtime

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Jobs runs long background work — imports, uploads, copies — at most one job per key (an
// object's uid, say). A job is not tied to the reconcile that started it: it runs until it
// returns or is cancelled, and its end usually queues the object again (the done callback).
type Jobs struct {
	mu   sync.Mutex
	jobs map[string]*job
}

type job struct {
	cancel  context.CancelFunc
	done    chan struct{}
	started time.Time
	what    string
}

// JobStatus describes a running job.
type JobStatus struct {
	What    string    // what Start was told the job does
	Started time.Time // when it started
}

// NewJobs returns a runner with no jobs.
func NewJobs() *Jobs { return &Jobs{jobs: map[string]*job{}} }

// Start runs fn as key's job unless key has one running, and reports whether it started.
// fn's context ends on Cancel or CancelAll. When fn returns, the job is forgotten (Running
// says false) and then done, if not nil, runs.
func (j *Jobs) Start(key, what string, fn func(ctx context.Context), done func()) bool {
	ctx, cancel := context.WithCancel(context.Background())
	jb := &job{cancel: cancel, done: make(chan struct{}), started: time.Now(), what: what}
	j.mu.Lock()
	if _, dup := j.jobs[key]; dup {
		j.mu.Unlock()
		cancel()
		return false
	}
	j.jobs[key] = jb
	j.mu.Unlock()
	jobsRunning.WithLabelValues(what).Inc()
	go func() {
		defer func() {
			jobsRunning.WithLabelValues(what).Dec()
			jobSeconds.WithLabelValues(what).Observe(time.Since(jb.started).Seconds())
			cancel()
			j.mu.Lock()
			if j.jobs[key] == jb {
				delete(j.jobs, key)
			}
			j.mu.Unlock()
			close(jb.done)
			if done != nil {
				done()
			}
		}()
		fn(ctx)
	}()
	return true
}

// Running says whether key has a job.
func (j *Jobs) Running(key string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.jobs[key]
	return ok
}

// Status returns the job of key, if one runs.
func (j *Jobs) Status(key string) (JobStatus, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	jb, ok := j.jobs[key]
	if !ok {
		return JobStatus{}, false
	}
	return JobStatus{What: jb.what, Started: jb.started}, true
}

// Keys returns the keys of the running jobs, sorted.
func (j *Jobs) Keys() []string {
	j.mu.Lock()
	out := make([]string, 0, len(j.jobs))
	for k := range j.jobs {
		out = append(out, k)
	}
	j.mu.Unlock()
	sort.Strings(out)
	return out
}

// Cancel stops key's job, if any, and waits until its function returned.
func (j *Jobs) Cancel(key string) {
	j.mu.Lock()
	jb := j.jobs[key]
	j.mu.Unlock()
	if jb != nil {
		jb.cancel()
		<-jb.done
	}
}

// CancelAll stops every job and waits for them.
func (j *Jobs) CancelAll() {
	j.mu.Lock()
	js := make([]*job, 0, len(j.jobs))
	for _, jb := range j.jobs {
		js = append(js, jb)
	}
	j.mu.Unlock()
	for _, jb := range js {
		jb.cancel()
		<-jb.done
	}
}
