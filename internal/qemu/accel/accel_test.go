package accel

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as a fake QEMU: with RAKHSH_FAKE_QEMU set it plays one of the
// behaviours below on the command line the prober gives it, instead of running the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("RAKHSH_FAKE_QEMU"); mode != "" {
		os.Exit(fakeQEMU(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func fakeQEMU(mode string, args []string) int {
	var log, cpu, accel string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-chardev":
			if _, p, ok := strings.Cut(args[i+1], "path="); ok {
				log = p
			}
		case "-cpu":
			cpu = args[i+1]
		case "-machine":
			_, accel, _ = strings.Cut(args[i+1], "accel=")
		}
	}
	firmware := "SeaBIOS (version fake)\nBooting from Hard Disk...\nBooting from 0000:7c00\n"
	guest := func(stages string) { _ = os.WriteFile(log, []byte(firmware+"\n"+banner+stages), 0o600) }
	switch mode {
	case "ok":
		guest(allStages + "\n")
		return exitPassed
	case "fail-at-start": // -cpu host on a host that refuses an MSR
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")
		return 134
	case "dies-on-payload": // nested KVM that cannot emulate the guest's code
		if accel == "tcg" {
			guest(allStages + "\n")
			return exitPassed
		}
		guest("rp")
		fmt.Fprintln(os.Stderr, "KVM internal error. Suberror: 1")
		fmt.Fprintln(os.Stderr, "extra data[0]: 0x0000000000000000")
		fmt.Fprintln(os.Stderr, "emulation failure")
		fmt.Fprintln(os.Stderr, "EAX=00000011 EBX=00000000 ECX=00000000 EDX=00000402")
		time.Sleep(time.Minute) // QEMU waits, paused, after an internal error
		return 0
	case "refuses-vpindex":
		for _, f := range []string{"hv_vpindex"} {
			if strings.Contains(cpu, f) {
				fmt.Fprintln(os.Stderr, "qemu-system-x86_64: kernel doesn't allow setting HyperV VP_INDEX")
				return 1
			}
		}
		for _, f := range []string{"hv_synic", "hv_tlbflush", "hv_ipi"} {
			if strings.Contains(cpu, f) && !strings.Contains(cpu, "hv_vpindex") {
				fmt.Fprintf(os.Stderr, "qemu-system-x86_64: Hyper-V %s requires Hyper-V VP_INDEX (hv-vpindex)\n", f)
				return 1
			}
		}
		if strings.Contains(cpu, "hv_stimer") && !strings.Contains(cpu, "hv_synic") {
			fmt.Fprintln(os.Stderr, "qemu-system-x86_64: Hyper-V synthetic timers (hv-stimer) requires Hyper-V SynIC (hv-synic)")
			return 1
		}
		guest(allStages + "\n")
		return exitPassed
	case "slow":
		if accel == "kvm" {
			time.Sleep(1500 * time.Millisecond)
		}
		guest(allStages + "\n")
		return exitPassed
	case "hangs":
		guest("rpl")
		time.Sleep(time.Minute)
		return 0
	}
	return 2
}

func fakeProber(t *testing.T, mode string) Prober {
	t.Helper()
	t.Setenv("RAKHSH_FAKE_QEMU", mode)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return Prober{Binary: self, Dir: t.TempDir(), DevKVM: dev, Timeout: 5 * time.Second}
}

func TestChooseWithFakeQEMU(t *testing.T) {
	cases := []struct {
		mode       string
		want       Mode
		kvm        bool
		reason     string
		msg        []string
		refused    []string
		maxTimeout bool
	}{
		{mode: "ok", want: ModeAuto, kvm: true, reason: ReasonProbed, msg: []string{"ran to its end"}},
		{mode: "fail-at-start", want: ModeAuto, reason: ReasonProbeFailed,
			msg: []string{"QEMU stopped before the firmware ran", "failed to set MSR 0x10a"}},
		{mode: "dies-on-payload", want: ModeAuto, reason: ReasonProbeFailed,
			msg: []string{"stopped after protected mode", "KVM internal error. Suberror: 1", "emulation failure"}},
		{mode: "refuses-vpindex", want: ModeAuto, kvm: true, reason: ReasonProbed,
			msg:     []string{"left out: hv_vpindex, hv_synic, hv_stimer, hv_tlbflush, hv_ipi"},
			refused: []string{"hv_vpindex", "hv_synic", "hv_stimer", "hv_tlbflush", "hv_ipi"}},
		{mode: "slow", want: ModeAuto, reason: ReasonProbeFailed, msg: []string{"under KVM and", "under TCG"}},
		{mode: "hangs", want: ModeAuto, reason: ReasonProbeFailed, msg: []string{"stopped after long mode", "killed after"}, maxTimeout: true},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			p := fakeProber(t, c.mode)
			if c.maxTimeout {
				p.Timeout = time.Second
			}
			start := time.Now()
			got := p.Choose(context.Background(), ModeAuto)
			took := time.Since(start)
			if got.Mode != c.want || got.KVM != c.kvm || got.Reason != c.reason {
				t.Fatalf("Choose = %+v, want mode %s kvm %t reason %s", got, c.want, c.kvm, c.reason)
			}
			for _, m := range c.msg {
				if !strings.Contains(got.Message, m) {
					t.Errorf("message %q lacks %q", got.Message, m)
				}
			}
			if strings.Contains(got.Message, "EAX=") {
				t.Errorf("message %q carries the register dump", got.Message)
			}
			if !reflect.DeepEqual(got.HypervRefused, c.refused) {
				t.Errorf("Hyper-V refused = %v, want %v", got.HypervRefused, c.refused)
			}
			// A KVM internal error is seen at once, not waited out (the fake waits a minute).
			if c.mode == "dies-on-payload" && took > 4*time.Second {
				t.Errorf("the probe took %s: it waited for a QEMU that stopped on a KVM error", took)
			}
		})
	}
}

func TestChooseForcedAndDisabled(t *testing.T) {
	p := fakeProber(t, "fail-at-start")
	c := p.Choose(context.Background(), ModeKVM)
	if !c.KVM || c.Reason != ReasonForced || !strings.Contains(c.Message, "failed to set MSR") {
		t.Errorf("forced KVM on a failing host = %+v; want KVM, Forced, and the probe's finding", c)
	}
	if c.HypervRefused != nil {
		t.Errorf("forced KVM on a host that fails the probe refuses %v; want none (QEMU reports what it refuses)", c.HypervRefused)
	}
	c = p.Choose(context.Background(), ModeTCG)
	if c.KVM || c.Reason != ReasonDisabled {
		t.Errorf("tcg = %+v", c)
	}
	p.DevKVM = filepath.Join(t.TempDir(), "absent")
	c = p.Choose(context.Background(), ModeAuto)
	if c.KVM || c.Reason != ReasonNoDevice || !strings.Contains(c.Message, "absent is not usable") {
		t.Errorf("auto without /dev/kvm = %+v", c)
	}
	c = p.Choose(context.Background(), ModeKVM)
	if !c.KVM || c.Reason != ReasonForced || !strings.Contains(c.Message, "VMs will fail to start") {
		t.Errorf("forced KVM without /dev/kvm = %+v", c)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "KVM": ModeKVM, " tcg ": ModeTCG} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseMode("hvf"); err == nil || !strings.Contains(err.Error(), "want auto, kvm or tcg") {
		t.Errorf("ParseMode(hvf) error = %v", err)
	}
}

func TestErrorLines(t *testing.T) {
	log := "qemu-system-x86_64: warning: host doesn't support requested feature\nKVM internal error. Suberror: 1\nemulation failure\nEAX=1 EBX=2\nCode=00 00\n"
	if got, want := ErrorLines(log, 3), "KVM internal error. Suberror: 1; emulation failure"; got != want {
		t.Errorf("ErrorLines = %q, want %q", got, want)
	}
	if got, want := ErrorLines("one\ntwo\nthree\n", 2), "two; three"; got != want {
		t.Errorf("ErrorLines without errors = %q, want %q", got, want)
	}
}

// TestPayloadAssembles checks that probe.bin is what probe.S assembles to.
func TestPayloadAssembles(t *testing.T) {
	for _, tool := range []string{"as", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found: install binutils", tool)
			}
			t.Skipf("%s not found: install binutils to check probe.bin against probe.S", tool)
		}
	}
	dir := t.TempDir()
	for _, c := range [][]string{
		{"as", "--64", "-o", filepath.Join(dir, "probe.o"), "probe.S"},
		{"ld", "-Ttext=0x7c00", "--oformat", "binary", "-o", filepath.Join(dir, "probe.bin"), filepath.Join(dir, "probe.o")},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, "probe.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(payload) {
		t.Fatalf("probe.bin differs from probe.S assembled (%d bytes): copy %s/probe.bin over it", len(got), dir)
	}
	if len(payload) != 512 || payload[510] != 0x55 || payload[511] != 0xaa {
		t.Fatalf("probe.bin is not a boot sector")
	}
}

// TestRealQEMUBootsPayload boots the payload with the real QEMU under TCG (the guest code is
// the same under either accelerator) and, where this host has a /dev/kvm, runs the real choice
// and checks it is consistent.
func TestRealQEMUBootsPayload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts QEMU; not in -short mode")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("qemu-system-x86_64 not found: install qemu-system-x86")
		}
		t.Skip("qemu-system-x86_64 not found: install qemu-system-x86")
	}
	p := Prober{Binary: bin, Dir: t.TempDir()}
	r, err := p.Boot(context.Background(), "tcg", "max")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Passed() || !r.Firmware {
		t.Fatalf("the payload did not pass under TCG: %+v (%s)", r, r.Explain())
	}
	c := p.Choose(context.Background(), ModeAuto)
	t.Logf("this host: KVM=%t %s: %s", c.KVM, c.Reason, c.Message)
	switch {
	case c.KVM && c.Reason != ReasonProbed, !c.KVM && c.Reason != ReasonNoDevice && c.Reason != ReasonProbeFailed:
		t.Errorf("auto chose %+v", c)
	case c.KVM && len(c.HypervRefused) == len(HypervEnlightenments):
		t.Logf("the host refuses every Hyper-V enlightenment")
	}
}
