package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/runtime"
)

// Schedule condition type and reasons.
const (
	ScheduleConditionReady = "Ready"
	ReasonScheduled        = "Scheduled"
	ReasonSuspended        = "Suspended"
	ReasonInvalidSchedule  = "InvalidSchedule"
)

// maxMissed bounds the walk over missed schedule times after a long outage.
const maxMissed = 100000

// lastSlot is the latest time of sch after from that is not after now (zero: none).
func lastSlot(next func(time.Time) time.Time, from, now time.Time) time.Time {
	var slot time.Time
	for t, i := next(from), 0; !t.IsZero() && !t.After(now) && i < maxMissed; t, i = next(t), i+1 {
		slot = t
	}
	return slot
}

// scheduledName names the backup a schedule takes at slot (the same name for the same slot,
// so that a controller that dies after the create does not make a second one).
func scheduledName(schedule string, slot time.Time) string {
	suffix := fmt.Sprintf("-%d", slot.Unix())
	if len(schedule)+len(suffix) > 63 {
		schedule = schedule[:63-len(suffix)]
	}
	return schedule + suffix
}

func (c *Controller) reconcileSchedule(ctx context.Context, key runtime.Key) (runtime.Result, error) {
	s, ok := c.schedules.Get(key)
	if !ok || s.DeletionTimestamp != nil {
		return runtime.Result{}, nil
	}
	st := s.Status
	st.Conditions = slices.Clone(s.Status.Conditions)
	st.ObservedGeneration = s.Generation
	cond := func(status, reason, msg string) {
		v1alpha1.SetCondition(&st.Conditions, v1alpha1.Condition{Type: ScheduleConditionReady, Status: status, Reason: reason, Message: msg, ObservedGeneration: s.Generation})
	}
	if s.Spec.Suspend {
		st.NextScheduleTime = nil
		cond(v1alpha1.ConditionFalse, ReasonSuspended, "spec.suspend is true: no backups are taken or pruned")
		return runtime.Result{}, c.writeSchedule(ctx, s, st)
	}
	sch, err := registry.ParseBackupSchedule(s.Spec.Schedule)
	if err != nil {
		cond(v1alpha1.ConditionFalse, ReasonInvalidSchedule, err.Error())
		return runtime.Result{}, c.writeSchedule(ctx, s, st)
	}
	now := c.now().UTC()
	from := now
	switch {
	case s.Status.LastScheduleTime != nil:
		from = s.Status.LastScheduleTime.Time
	case s.CreationTimestamp != nil:
		from = s.CreationTimestamp.Time
	}
	if slot := lastSlot(sch.Next, from, now); !slot.IsZero() {
		name := scheduledName(s.Name, slot)
		b := v1alpha1.VirtualMachineBackup{
			TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachineBackup"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name, Namespace: s.Namespace,
				Labels: map[string]string{v1alpha1.LabelBackupSchedule: s.Name}},
			Spec: v1alpha1.VirtualMachineBackupSpec{VirtualMachineName: s.Spec.VirtualMachineName, BackupTargetName: s.Spec.BackupTargetName,
				Mode: s.Spec.Mode, BandwidthLimit: s.Spec.BandwidthLimit},
		}
		if err := c.C.Create(ctx, "virtualmachinebackups", s.Namespace, &b, nil); err != nil && !client.IsAlreadyExists(err) {
			cond(v1alpha1.ConditionFalse, ReasonScheduled, fmt.Sprintf("creating backup %q: %v", name, err))
			_ = c.writeSchedule(ctx, s, st)
			return runtime.Result{}, err
		}
		c.Log.Info("scheduled backup created", "schedule", s.Namespace+"/"+s.Name, "backup", name)
		t := v1alpha1.NewTime(slot)
		st.LastScheduleTime, st.LastBackupName = &t, name
		from = slot
	}
	next := sch.Next(from)
	var res runtime.Result
	if !next.IsZero() {
		t := v1alpha1.NewTime(next)
		st.NextScheduleTime = &t
		res.RequeueAfter = max(time.Until(next), 100*time.Millisecond)
	}
	pruned, err := c.prune(ctx, s)
	st.Pruned += int64(pruned)
	if err != nil {
		cond(v1alpha1.ConditionFalse, ReasonScheduled, "pruning: "+err.Error())
		_ = c.writeSchedule(ctx, s, st)
		return runtime.Result{}, err
	}
	msg := "next backup at " + next.Format(time.RFC3339)
	if next.IsZero() {
		msg = "the schedule has no next time"
	}
	cond(v1alpha1.ConditionTrue, ReasonScheduled, msg)
	return res, c.writeSchedule(ctx, s, st)
}

// prune deletes the schedule's backups its retention policy does not keep: among its
// Completed backups, those the policy does not select; and its Failed backups older than its
// newest Completed one. The target's space is freed by the next backup's garbage collection.
func (c *Controller) prune(ctx context.Context, s *v1alpha1.BackupSchedule) (int, error) {
	r := s.Spec.Retention
	if r == (v1alpha1.BackupRetention{}) {
		return 0, nil
	}
	var done, failed []*v1alpha1.VirtualMachineBackup
	for _, b := range c.backups.List() {
		if b.Namespace != s.Namespace || b.Labels[v1alpha1.LabelBackupSchedule] != s.Name || b.Spec.VirtualMachineName != s.Spec.VirtualMachineName || b.DeletionTimestamp != nil {
			continue
		}
		switch b.Status.Phase {
		case v1alpha1.BackupPhaseCompleted:
			done = append(done, b)
		case v1alpha1.BackupPhaseFailed:
			failed = append(failed, b)
		}
	}
	times := make([]time.Time, len(done))
	for i, b := range done {
		times[i] = backupTime(b)
	}
	keep := Retain(times, r)
	var drop []*v1alpha1.VirtualMachineBackup
	var newest time.Time
	for i, b := range done {
		if keep[i] {
			if times[i].After(newest) {
				newest = times[i]
			}
			continue
		}
		drop = append(drop, b)
	}
	for _, b := range failed {
		if !newest.IsZero() && backupTime(b).Before(newest) {
			drop = append(drop, b)
		}
	}
	n := 0
	for _, b := range drop {
		err := c.C.Delete(ctx, "virtualmachinebackups", b.Namespace, b.Name)
		if err != nil && !client.IsNotFound(err) {
			return n, err
		}
		n++
		c.Log.Info("backup pruned", "schedule", s.Namespace+"/"+s.Name, "backup", b.Name, "phase", b.Status.Phase)
		c.Rec.Event(ctx, "BackupSchedule", s, "Normal", "Pruned", fmt.Sprintf("deleted backup %s (%s) by the retention policy", b.Name, b.Status.Phase))
	}
	return n, nil
}

// backupTime is a backup's instant: when it started, or else when it was created.
func backupTime(b *v1alpha1.VirtualMachineBackup) time.Time {
	if b.Status.StartedAt != nil {
		return b.Status.StartedAt.Time
	}
	if b.CreationTimestamp != nil {
		return b.CreationTimestamp.Time
	}
	return time.Time{}
}

// Retain applies a retention policy to backups taken at times and says which to keep. Rules
// apply in order (last, hourly, daily, weekly, monthly); each keeps the newest backup of each
// of its next N periods that hold a backup, skipping periods of backups an earlier rule kept.
func Retain(times []time.Time, r v1alpha1.BackupRetention) []bool {
	order := make([]int, len(times))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return times[order[a]].After(times[order[b]]) })
	keep := make([]bool, len(times))
	rules := []struct {
		n      int
		period func(t time.Time) string
	}{
		{r.KeepLast, func(t time.Time) string { return t.Format(time.RFC3339Nano) }},
		{r.KeepHourly, func(t time.Time) string { return t.UTC().Format("2006-01-02T15") }},
		{r.KeepDaily, func(t time.Time) string { return t.UTC().Format("2006-01-02") }},
		{r.KeepWeekly, func(t time.Time) string { y, w := t.UTC().ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{r.KeepMonthly, func(t time.Time) string { return t.UTC().Format("2006-01") }},
	}
	for ri, rule := range rules {
		if rule.n <= 0 {
			continue
		}
		covered := map[string]bool{}
		for _, i := range order {
			if keep[i] {
				covered[rule.period(times[i])] = true
			}
		}
		taken := map[string]bool{}
		for _, i := range order {
			if keep[i] {
				continue
			}
			p := rule.period(times[i])
			if ri == 0 {
				p = fmt.Sprint(i) // keepLast: every backup is its own period
			}
			if covered[p] || taken[p] {
				continue
			}
			if len(taken) >= rule.n {
				break
			}
			taken[p] = true
			keep[i] = true
		}
	}
	return keep
}

func (c *Controller) writeSchedule(ctx context.Context, s *v1alpha1.BackupSchedule, st v1alpha1.BackupScheduleStatus) error {
	x, _ := json.Marshal(s.Status)
	y, _ := json.Marshal(st)
	if string(x) == string(y) {
		return nil
	}
	n := *s
	n.Status = st
	err := c.C.UpdateStatus(ctx, "backupschedules", s.Namespace, s.Name, &n, nil)
	if client.IsNotFound(err) {
		return nil
	}
	return err
}
