package registry

import (
	"fmt"
	"unicode"
	"unicode/utf8"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("Project", typed[*v1alpha1.Project]{
		// A project is Active from its creation (it is deleted only once empty, at once).
		Default: func(p *v1alpha1.Project) {
			if p.Status.Phase == "" {
				p.Status.Phase = v1alpha1.ProjectPhaseActive
			}
		},
		Validate: validateProject,
		// Nothing of a project's spec is immutable.
	})
}

const (
	maxProjectMembers = 1000
	maxMemberName     = 256
)

func validateProject(p *v1alpha1.Project) errs.FieldErrors {
	var fe errs.FieldErrors
	s := &p.Spec
	if len(s.Description) > v1alpha1.MaxProjectDescription {
		fe = append(fe, errs.FieldError{Field: "spec.description", Type: errs.FieldValueTooLong,
			Message: fmt.Sprintf("Too long: may have at most %d bytes (has %d)", v1alpha1.MaxProjectDescription, len(s.Description))})
	}
	if q := s.Quota; q != nil {
		chkCount(&fe, "spec.quota.cores", q.Cores)
		chkCount(&fe, "spec.quota.virtualMachines", q.VirtualMachines)
		chkCount(&fe, "spec.quota.images", q.Images)
		if q.Memory != "" {
			chkQuantity(&fe, "spec.quota.memory", q.Memory)
		}
		if q.Disk != "" {
			chkQuantity(&fe, "spec.quota.disk", q.Disk)
		}
	}
	if d := s.Defaults; d != nil {
		chkRefName(&fe, "spec.defaults.virtualMachineClassName", d.VirtualMachineClassName, false)
	}
	if len(s.Members) > maxProjectMembers {
		fe.Invalid("spec.members", nil, fmt.Sprintf("a project may have at most %d members (has %d)", maxProjectMembers, len(s.Members)))
	}
	seen := map[string]int{}
	for i, m := range s.Members {
		path := fmt.Sprintf("spec.members[%d]", i)
		switch {
		case m.Name == "":
			fe.Required(path+".name", "a user name is required")
		case len(m.Name) > maxMemberName || !printableNoSpace(m.Name):
			fe.Invalid(path+".name", m.Name, fmt.Sprintf("must be at most %d printable characters without spaces", maxMemberName))
		default:
			if j, dup := seen[m.Name]; dup {
				fe.Duplicate(path+".name", fmt.Sprintf("%s (also spec.members[%d])", m.Name, j))
			} else {
				seen[m.Name] = i
			}
		}
		chkEnum(&fe, path+".role", m.Role, true, v1alpha1.ProjectRoleAdmin, v1alpha1.ProjectRoleUser, v1alpha1.ProjectRoleViewer)
	}
	return fe
}

func chkCount(fe *errs.FieldErrors, path string, n *int64) {
	if n != nil && *n < 0 {
		fe.Invalid(path, *n, "must be 0 or more (leave it unset for no limit)")
	}
}

func printableNoSpace(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
