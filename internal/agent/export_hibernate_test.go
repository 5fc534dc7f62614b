package agent

// SetHibernationFreeSpace makes the free-space check of hibernations see free bytes, until
// the returned function puts the real check back.
func SetHibernationFreeSpace(free int64) func() {
	old := hibernationFreeSpace
	hibernationFreeSpace = func(string) (int64, error) { return free, nil }
	return func() { hibernationFreeSpace = old }
}
