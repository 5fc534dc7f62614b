package provision

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
)

// Volume labels of the media.
const (
	// CloudInitLabel is the label cloud-init's NoCloud data source looks for.
	CloudInitLabel = "cidata"
	// SysprepLabel labels the sysprep medium; Windows Setup finds autounattend.xml on any
	// removable medium, whatever its label.
	SysprepLabel = "sysprep"
)

// Medium is a provisioning medium ready to be written to a file and attached as a CD-ROM.
type Medium struct {
	// Kind is "cloud-init" or "sysprep".
	Kind string
	// Files are the files on it, by name (never logged: they may hold passwords).
	Files []File
	// Label is the volume label.
	Label string
}

// ISO returns the medium as an ISO 9660 image with dates t.
func (m Medium) ISO(t time.Time) ([]byte, error) {
	return WriteISO(ISOOptions{VolumeID: m.Label, Time: t}, m.Files)
}

// Source is where a VM's provisioning data comes from; the agent fills it in from the VM and
// the referenced Secret.
type Source struct {
	// VMName and VMUID become local-hostname and instance-id in the NoCloud meta-data.
	VMName, VMUID string
	// Provisioning is spec.provisioning.
	Provisioning *v1alpha1.Provisioning
	// Secret is the Secret named by userDataRef or sysprepRef (nil for inline user data).
	Secret *v1alpha1.Secret
}

// Build makes the medium for src; nil without provisioning. Errors name the field or the
// Secret key at fault and never quote the data.
func Build(src Source) (*Medium, error) {
	p := src.Provisioning
	if p == nil {
		return nil, nil
	}
	switch p.Type {
	case v1alpha1.ProvisioningTypeUserData:
		if p.UserData == "" {
			return nil, fmt.Errorf("spec.provisioning.userData is empty")
		}
		return cloudInit(src, []byte(p.UserData))
	case v1alpha1.ProvisioningTypeUserDataRef:
		s, err := secretFor(src, "userDataRef", "user data", v1alpha1.SecretTypeCloudInit, v1alpha1.SecretType.IsCloudInit)
		if err != nil {
			return nil, err
		}
		for _, k := range []string{v1alpha1.SecretKeyUserData, v1alpha1.SecretKeyUserDataLower} {
			if v, ok := s.Data[k]; ok {
				if len(v) == 0 {
					return nil, fmt.Errorf("Secret %q: key %s is empty", s.Name, k)
				}
				return cloudInit(src, v)
			}
		}
		return nil, fmt.Errorf("Secret %q has no key %s (or %s) with the user data", s.Name, v1alpha1.SecretKeyUserData, v1alpha1.SecretKeyUserDataLower)
	case v1alpha1.ProvisioningTypeSysprepRef:
		s, err := secretFor(src, "sysprepRef", "sysprep", v1alpha1.SecretTypeSysprep, v1alpha1.SecretType.IsSysprep)
		if err != nil {
			return nil, err
		}
		m := &Medium{Kind: "sysprep", Label: SysprepLabel}
		var unknown []string
		for k, v := range s.Data {
			switch k {
			case v1alpha1.SecretKeyAutounattend, v1alpha1.SecretKeyUnattend:
				if len(v) == 0 {
					return nil, fmt.Errorf("Secret %q: key %s is empty", s.Name, k)
				}
				m.Files = append(m.Files, File{Name: k, Data: v})
			default:
				unknown = append(unknown, k)
			}
		}
		if len(m.Files) == 0 {
			return nil, fmt.Errorf("Secret %q has neither %s nor %s", s.Name, v1alpha1.SecretKeyAutounattend, v1alpha1.SecretKeyUnattend)
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return nil, fmt.Errorf("Secret %q: keys %s are not sysprep files (only %s and %s are)", s.Name,
				strings.Join(unknown, ", "), v1alpha1.SecretKeyAutounattend, v1alpha1.SecretKeyUnattend)
		}
		sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Name < m.Files[j].Name })
		return m, nil
	default:
		return nil, fmt.Errorf("spec.provisioning.type %q is not one of UserData, UserDataRef, SysprepRef", p.Type)
	}
}

// secretFor returns the Secret that spec.provisioning.FIELD names, refusing one whose type is
// neither Opaque nor one that is accepts (want names the type that use needs).
func secretFor(src Source, field, use string, want v1alpha1.SecretType, is func(v1alpha1.SecretType) bool) (*v1alpha1.Secret, error) {
	s := src.Secret
	if s == nil {
		return nil, fmt.Errorf("spec.provisioning.%s: no Secret", field)
	}
	if s.Type != "" && s.Type != v1alpha1.SecretTypeOpaque && !is(s.Type) {
		return nil, fmt.Errorf("Secret %q has type %s; %s needs type %s (or Opaque)", s.Name, s.Type, use, want)
	}
	return s, nil
}

// cloudInit makes the NoCloud seed: meta-data (instance-id, local-hostname) and user-data.
func cloudInit(src Source, userData []byte) (*Medium, error) {
	if src.VMUID == "" || src.VMName == "" {
		return nil, fmt.Errorf("the VM's name and uid are needed for the cloud-init meta-data")
	}
	// Both values are a UUID and a DNS label: nothing needs quoting in YAML.
	meta := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", src.VMUID, src.VMName)
	return &Medium{Kind: "cloud-init", Label: CloudInitLabel, Files: []File{
		{Name: "meta-data", Data: []byte(meta)},
		{Name: "user-data", Data: userData},
	}}, nil
}
