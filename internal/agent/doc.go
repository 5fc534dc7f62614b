// Package agent is the Rakhsh node agent: one per host. It registers the host's Node and
// heartbeats, watches the VirtualMachines bound to the node (status.nodeName) and makes the
// host match them: it starts QEMU (paused, then cont over QMP), stops, pauses, resumes and
// restarts it as status.powerRequest asks, turns QMP events and process exits into status
// (phase, conditions, stats, lastExit), and keeps each VM's serial output in a bounded log.
//
// QEMU processes are never tied to the agent: each runs in its own session and outlives the
// agent and `rakhsh serve`. On start the agent re-adopts every QEMU it finds in the VM run
// directories (pid from RUNDIR/qemu.pid, checked against /proc/PID/cmdline carrying the VM's
// uid) and reconnects QMP and the serial console; it never starts a second QEMU for a VM.
//
// The agent owns these VM status fields: phase (while the VM is bound to its node), nodeName
// (only to release a stopped VM), conditions Running and SoftwareEmulation, stats, versions,
// resources, lastExit and observedRestartID. Every write is a JSON merge patch of those
// fields guarded by the object's resourceVersion, so the scheduler's and the VM controller's
// fields are never overwritten.
package agent
