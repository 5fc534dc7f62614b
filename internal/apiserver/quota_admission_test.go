package apiserver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// TestQuotaConcurrentCreates: 20 concurrent creates into a project with room for 5 VMs admit
// exactly 5; the others are Forbidden with the quota named.
func TestQuotaConcurrentCreates(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "db"), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := New(Config{Store: st})
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pst, _ := registry.ByKind("Project")
	five := int64(5)
	p := &v1alpha1.Project{ObjectMeta: v1alpha1.ObjectMeta{Name: "team"}, Spec: v1alpha1.ProjectSpec{Quota: &v1alpha1.ProjectQuota{VirtualMachines: &five}}}
	setTypeMeta(p, "Project")
	if _, _, err := s.Create(ctx, pst, "", p); err != nil {
		t.Fatal(err)
	}
	vst, _ := registry.ByKind("VirtualMachine")
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			vm := &v1alpha1.VirtualMachine{ObjectMeta: v1alpha1.ObjectMeta{Name: fmt.Sprintf("vm%d", i)}}
			setTypeMeta(vm, "VirtualMachine")
			vm.Spec.RunPolicy = v1alpha1.RunPolicyAlwaysOff
			vm.Spec.CPU.Cores = 1
			vm.Spec.Memory.Size = "128Mi"
			_, _, err := s.Create(ctx, vst, "team", vm)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errs.ErrForbidden) && strings.Contains(err.Error(), "exceeded quota virtualMachines"):
				refused++
			default:
				t.Errorf("vm%d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if ok != 5 || refused != 15 {
		t.Fatalf("admitted %d, refused %d; want 5 and 15", ok, refused)
	}
	u, err := s.ProjectUsage(ctx, "team")
	if err != nil || u.VirtualMachines != 5 || u.Cores != 5 || u.Memory != "640Mi" {
		t.Fatalf("usage %+v %v", u, err)
	}
}
