package apiserver

import (
	"context"
	"strings"
	"testing"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

func TestParsePortRange(t *testing.T) {
	if r, err := ParsePortRange(" 20000 - 32767 "); err != nil || r != (PortRange{20000, 32767}) {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{"", "20000", "2-1", "0-10", "1-65536", "a-b", "1-2-3"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A port forward must take a host port inside the configured range when it is added; forwards a
// VM already has stay valid when the range changes, so its later writes are not refused.
func TestPortForwardRange(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	vm := func(name string, ports ...int) *v1alpha1.VirtualMachine {
		v := &v1alpha1.VirtualMachine{TypeMeta: v1alpha1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: "VirtualMachine"},
			ObjectMeta: v1alpha1.ObjectMeta{Name: name},
			Spec: v1alpha1.VirtualMachineSpec{RunPolicy: v1alpha1.RunPolicyAlwaysOff, CPU: v1alpha1.VirtualMachineCPU{Cores: 1},
				Memory: v1alpha1.VirtualMachineMemory{Size: "128Mi"}}}
		n := v1alpha1.NetworkSpec{Type: v1alpha1.NetworkTypeMain}
		for _, p := range ports {
			n.PortForwards = append(n.PortForwards, v1alpha1.PortForward{HostPort: p, Port: 22})
		}
		v.Spec.Networks = []v1alpha1.NetworkSpec{n}
		return v
	}
	c := localTestServer(t, dir, Config{PortForwardRange: DefaultPortForwardRange})
	err := c.Create(ctx, "virtualmachines", "default", vm("ssh", 22), nil)
	if !client.IsInvalid(err) || !strings.Contains(err.Error(), "spec.networks[0].portForwards[0].hostPort") ||
		!strings.Contains(err.Error(), "must be in 20000-32767") || !strings.Contains(err.Error(), "--port-forward-range") {
		t.Fatalf("a forward of host port 22: %v", err)
	}
	ok := vm("ok", 20022)
	if err := c.Create(ctx, "virtualmachines", "default", ok, ok); err != nil {
		t.Fatal(err)
	}
	// Adding a forward outside the range to an existing VM is refused; keeping one it had is not.
	ok.Spec.Networks[0].PortForwards = append(ok.Spec.Networks[0].PortForwards, v1alpha1.PortForward{HostPort: 2379, Port: 2379})
	if err := c.Update(ctx, "virtualmachines", "default", "ok", ok, nil); !client.IsInvalid(err) || !strings.Contains(err.Error(), "portForwards[1].hostPort") {
		t.Fatalf("adding host port 2379: %v", err)
	}
	// A VM stored before the range (or under a wider one) keeps its forward through later
	// writes; only a new out-of-range forward is refused.
	srv := &Server{forwardRange: DefaultPortForwardRange}
	legacy := vm("legacy", 22)
	edited := vm("legacy", 22)
	edited.Spec.CPU.Cores = 2
	if fe := srv.policyErrors(edited, legacy); len(fe) != 0 {
		t.Errorf("an edit keeping the old forward of host port 22: %v", fe)
	}
	edited.Spec.Networks[0].PortForwards = append(edited.Spec.Networks[0].PortForwards, v1alpha1.PortForward{Protocol: "UDP", HostPort: 22, Port: 22})
	if fe := srv.policyErrors(edited, legacy); len(fe) != 1 {
		t.Errorf("a new UDP forward of host port 22 next to the old TCP one: %v", fe)
	}
	if fe := (&Server{}).policyErrors(vm("any", 22), nil); len(fe) != 0 {
		t.Errorf("a server without a range: %v", fe)
	}
}
