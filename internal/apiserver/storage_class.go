package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/registry"
)

// checkStorageClassUnused refuses to delete a StorageClass that a disk names in its spec or
// lives in (status): its files would be left without a class that says where they are.
func (s *Server) checkStorageClassUnused(ctx context.Context, name string) error {
	st, _ := registry.ByKind("VirtualDisk")
	res, err := s.store.List(ctx, prefix(st.Info, ""), storeListLimit(0))
	if err != nil {
		return err
	}
	var users []string
	for _, kv := range res.KVs {
		var d struct {
			Metadata v1alpha1.ObjectMeta `json:"metadata"`
			Spec     struct {
				PVC struct {
					StorageClassName string `json:"storageClassName"`
				} `json:"persistentVolumeClaim"`
			} `json:"spec"`
			Status struct {
				StorageClassName string `json:"storageClassName"`
			} `json:"status"`
		}
		if json.Unmarshal(kv.Value, &d) != nil {
			continue
		}
		if d.Spec.PVC.StorageClassName == name || d.Status.StorageClassName == name {
			users = append(users, d.Metadata.Namespace+"/"+d.Metadata.Name)
		}
	}
	if len(users) == 0 {
		return nil
	}
	sort.Strings(users)
	more := ""
	if len(users) > 5 {
		more = " and " + strconv.Itoa(len(users)-5) + " more"
		users = users[:5]
	}
	return errs.New(errs.ErrForbidden, "storage class %q is used by VirtualDisks %s%s: delete or move them first",
		name, strings.Join(users, ", "), more)
}

// EnsureDefaultStorageClass creates the Local class DefaultStorageClassName, marked default,
// when no StorageClass exists (the first start of a cluster). Classes an operator made are
// never touched.
func (s *Server) EnsureDefaultStorageClass(ctx context.Context) error {
	st, _ := registry.ByKind("StorageClass")
	res, err := s.store.List(ctx, prefix(st.Info, ""), storeListLimit(1))
	if err != nil {
		return err
	}
	if len(res.KVs) > 0 {
		return nil
	}
	sc := &v1alpha1.StorageClass{ObjectMeta: v1alpha1.ObjectMeta{Name: v1alpha1.DefaultStorageClassName,
		Annotations: map[string]string{v1alpha1.AnnotationDefaultStorageClass: "true"}},
		Spec: v1alpha1.StorageClassSpec{Type: v1alpha1.StorageClassTypeLocal}}
	setTypeMeta(sc, "StorageClass")
	_, _, err = s.Create(ctx, st, "", sc)
	if err != nil && !errors.Is(err, errs.ErrAlreadyExists) {
		return err
	}
	return nil
}
