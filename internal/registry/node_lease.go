package registry

import (
	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
)

func init() {
	registerTyped("NodeLease", typed[*v1alpha1.NodeLease]{
		Validate: func(l *v1alpha1.NodeLease) errs.FieldErrors {
			var fe errs.FieldErrors
			if d := l.Spec.LeaseDurationSeconds; d < 0 || d > 3600 {
				fe.Invalid("spec.leaseDurationSeconds", d, "must be between 1 and 3600 seconds (0: not set)")
			}
			if l.Spec.LeaseTransitions < 0 {
				fe.Invalid("spec.leaseTransitions", l.Spec.LeaseTransitions, "must not be negative")
			}
			if h := l.Spec.HolderIdentity; len(h) > 253 {
				fe.Invalid("spec.holderIdentity", h, "must be at most 253 characters")
			}
			return fe
		},
	})
}
