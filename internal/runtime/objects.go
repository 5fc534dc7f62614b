package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
)

// Read reads the object of key from the API (not a cache) into out. It says false, with no
// error, when the object is gone: a reconcile then has nothing to do.
func Read(ctx context.Context, c client.Interface, resource string, key Key, out any) (bool, error) {
	ns, name := key.Split()
	if err := c.Get(ctx, resource, ns, name, out); err != nil {
		if client.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// AddFinalizer adds finalizer to the object of m with a merge patch guarded by m's
// resourceVersion: it conflicts when the object changed since it was read.
func AddFinalizer(ctx context.Context, c client.Interface, resource string, m *v1alpha1.ObjectMeta, finalizer string) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"finalizers": append(slices.Clone(m.Finalizers), finalizer), "resourceVersion": m.ResourceVersion}})
	if err := c.Patch(ctx, resource, m.Namespace, m.Name, patch, nil); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	return nil
}

// MergeStatus writes status (the status or some of its fields) to the object of m with a
// merge patch of its status. It says false, with no error, when the object is gone.
func MergeStatus(ctx context.Context, c client.Interface, resource string, m *v1alpha1.ObjectMeta, status any) (bool, error) {
	body, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return false, err
	}
	if err := c.PatchStatus(ctx, resource, m.Namespace, m.Name, body, nil); err != nil {
		if client.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
