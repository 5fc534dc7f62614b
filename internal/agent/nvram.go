package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
)

// nvramFileName is a VM's UEFI variable store in its run directory.
const nvramFileName = "efivars.fd"

// ensureNVRAM makes the VM's UEFI variable store from template on first boot and remembers
// which template it came from (path + ".template"). When the template changes (EFI to
// EFIWithSecureBoot or back), the store is made anew: a store from the plain template has no
// Secure Boot keys, so keeping it would silently leave Secure Boot off. A store made before
// the marker existed is taken to come from the current template.
func ensureNVRAM(template, path string) (replaced bool, err error) {
	marker := path + ".template"
	prev, merr := os.ReadFile(marker)
	_, serr := os.Stat(path)
	switch {
	case serr == nil && merr == nil && string(prev) == template:
		return false, nil
	case serr == nil && merr == nil:
		if err := os.Remove(path); err != nil {
			return false, err
		}
		replaced = true
	case serr == nil: // no marker yet
		return false, os.WriteFile(marker, []byte(template), 0o600)
	}
	if err := copyIfMissing(template, path); err != nil {
		return false, err
	}
	return replaced, os.WriteFile(marker, []byte(template), 0o600)
}

// copyIfMissing copies src to dst (0600) unless dst exists, through a temporary file.
func copyIfMissing(src, dst string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// stepNVRAM makes the UEFI variable store from its template on the first start, or anew when
// the bootloader changed (ensureNVRAM). A store this start made is removed again on failure;
// one that was there before stays (a replaced one matches the new bootloader, and the old
// one is gone).
func (a *Agent) stepNVRAM(ctx context.Context, r *startRun) error {
	path := r.input.NVRAMPath
	if path == "" || r.cfg.NVRAMTemplate == "" {
		return nil
	}
	_, statErr := os.Stat(path)
	replaced, err := ensureNVRAM(r.cfg.NVRAMTemplate, path)
	if err != nil {
		return failStart("creating the UEFI variable store: " + err.Error())
	}
	if errors.Is(statErr, os.ErrNotExist) {
		r.undo.add(stepNVRAM, func() {
			_ = os.Remove(path)
			_ = os.Remove(path + ".template")
		})
	}
	if replaced {
		a.log.Info("the bootloader changed: the UEFI variable store was made anew from its template", "vm", string(r.key), "template", r.cfg.NVRAMTemplate)
		a.rec.Event(ctx, "VirtualMachine", r.vm, "Normal", "NVRAMReset",
			"spec.bootloader changed: the UEFI variables were reset from "+filepath.Base(r.cfg.NVRAMTemplate)+" (boot entries are found again on the next boot)")
	}
	return nil
}

// hostStateNode is what a stopped VM's status.stateNodeName says: this node while its run
// directory keeps a UEFI variable store, TPM state or a hibernated guest's RAM state, ""
// otherwise.
func (a *Agent) hostStateNode(uid string) string {
	dir := a.runDir(uid)
	for _, name := range []string{nvramFileName, tpmStateDirName, hibernationDirName} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return a.cfg.NodeName
		}
	}
	return ""
}
