// Package vmbench holds the VM benchmarks (vmbench_test.go): the time from creating a VM
// through the API to QEMU running the guest, side by side with a bare QEMU started by hand
// with the same command line, and 20 VMs created at once with the node agent's memory per VM.
// They boot the test guest (test/guest) under a real `rakhsh serve`; run them with
// scripts/bench-vm.sh. Plain `go test ./...` runs no benchmark and stays fast.
package vmbench
