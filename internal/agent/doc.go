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
// A reconcile of one VM observes its QEMU (Observed) and reads the VM object (Desired); the
// pure Decide picks the next Action (decide.go), which reconcile.go and act.go carry out. A
// VM's QEMU is a Machine (machine.go): started, connected, waited for, shut down. A start is
// a list of named steps (start.go: disks, provisioning, NICs, config, NVRAM, run files,
// phase Starting, TPM, launch, QMP, VNC, cgroups, cont); each step that changes the host adds
// its undo to a revert stack (revert.go), so a failing step undoes the steps before it, last
// first. Stops are in stop.go, exits and deletions in exit.go, status writes in vmstatus.go.
//
// Besides VMs, the agent grows disks of running VMs online (resize.go) and carries out disk
// moves between Shared storage and this node's Local storage that the disk controller hands
// to it, and removes the files of deleted disks on this node's Local storage (diskmove.go).
//
// The agent owns these VM status fields: phase (while the VM is bound to its node), nodeName
// (only to release a stopped VM), conditions Running and SoftwareEmulation, stats, versions,
// resources, lastExit and observedRestartID. Every write is a JSON merge patch of those
// fields guarded by the object's resourceVersion, so the scheduler's and the VM controller's
// fields are never overwritten.
package agent
