package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/provision"
	"github.com/rakhsh/rakhsh/internal/qemu"
)

// provisioningISOName is the VM's provisioning medium (cloud-init NoCloud seed or sysprep
// answer files) in its run directory. It is written again before every start from the
// current spec and Secret, so an edited Secret takes effect at the next start (cloud-init
// itself runs its per-instance modules once per instance-id, the VM's uid).
const provisioningISOName = "provisioning.iso"

// provisioningDiskID is the disk ID of the provisioning CD-ROM.
const provisioningDiskID = "provisioning"

// provisioningDisk writes the VM's provisioning medium and returns it as a CD-ROM to attach
// after the VM's own block devices; nil without spec.provisioning. Errors name the Secret and
// the problem, never the data.
func (a *Agent) provisioningDisk(ctx context.Context, vm *v1alpha1.VirtualMachine, runDir string) (*qemu.Disk, error) {
	path := filepath.Join(runDir, provisioningISOName)
	p := vm.Spec.Provisioning
	if p == nil {
		_ = os.Remove(path)
		return nil, nil
	}
	src := provision.Source{VMName: vm.Name, VMUID: vm.UID, Provisioning: p}
	var ref *v1alpha1.ProvisioningSecret
	field := ""
	switch p.Type {
	case v1alpha1.ProvisioningTypeUserDataRef:
		ref, field = p.UserDataRef, "userDataRef"
	case v1alpha1.ProvisioningTypeSysprepRef:
		ref, field = p.SysprepRef, "sysprepRef"
	}
	if field != "" {
		if ref == nil || ref.Name == "" {
			return nil, fmt.Errorf("spec.provisioning.%s: no Secret named", field)
		}
		var s v1alpha1.Secret
		if err := a.c.Get(ctx, "secrets", vm.Namespace, ref.Name, &s); err != nil {
			if client.IsNotFound(err) {
				return nil, fmt.Errorf("spec.provisioning.%s: Secret %q not found", field, ref.Name)
			}
			return nil, fmt.Errorf("spec.provisioning.%s: reading Secret %q: %w", field, ref.Name, err)
		}
		src.Secret = &s
	}
	m, err := provision.Build(src)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	var stamp time.Time
	if vm.CreationTimestamp != nil {
		stamp = vm.CreationTimestamp.Time
	}
	img, err := m.ISO(stamp)
	if err != nil {
		return nil, fmt.Errorf("provisioning: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, img, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, err
	}
	a.log.Info("wrote the provisioning medium", "vm", vm.Namespace+"/"+vm.Name, "kind", m.Kind, "files", len(m.Files), "bytes", len(img))
	return &qemu.Disk{ID: provisioningDiskID, Path: path, Format: qemu.FormatRaw, CDROM: true, ReadOnly: true}, nil
}
