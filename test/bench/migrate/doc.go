// Command migrate is the bare-QEMU baseline of the live-migration benchmark
// (docs/benchmarks.md, "Live migration (bare QEMU baseline)").
//
// It boots the test guest (test/guest) in a source QEMU, types a tick loop into
// the guest's serial shell (and, for the dirty cases, a loop rewriting a tmpfs
// file with random data), then migrates the running guest over loopback TCP to
// a fresh target QEMU started with the same device model and -incoming defer,
// driving both QEMUs by hand over QMP (internal/qemu/qmp). Every migration is
// a hop in a chain: the target of one run is the source of the next, so a case
// boots the guest once and the checks can demand a single boot marker for the
// whole chain and a tick counter that never restarts.
//
// For every run it records QEMU's own figures from query-migrate (total-time,
// downtime, setup-time, RAM transferred, dirty-sync iterations, the final CPU
// throttle under auto-converge), the wall time from the migrate command to the
// source's MIGRATION "completed" event, and the guest-visible pause from the
// source's STOP event to the target's RESUME event (QEMU's event timestamps,
// one host clock). After each run it checks on the target's serial console
// that the tick counter goes on above the last tick seen on the source and
// that no new boot marker appeared; for the dirty cases also that the dirtying
// loop still runs and that the md5 of the file it copies from is unchanged.
// Per case it prints median [min–max].
//
// Run it with scripts/bench-migrate.sh (which takes the machine-wide
// benchmark lock) or by hand:
//
//	flock /tmp/rakhsh-e2e.lock go run ./test/bench/migrate -runs 5
//
// It has no tests of its own to run in `go test ./...`; it only builds there.
package main
