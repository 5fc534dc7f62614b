// Package mergepatch applies RFC 7386 JSON merge patches to decoded JSON values. It imports
// nothing of Rakhsh, so that the API server and the packages below it (the registry's tests)
// share one implementation.
package mergepatch

// Apply applies the merge patch patch to target and returns the result; target's maps may be
// changed in place.
func Apply(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(tm, k)
			continue
		}
		tm[k] = Apply(tm[k], v)
	}
	return tm
}
