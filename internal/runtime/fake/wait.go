package fake

import (
	"context"
	"reflect"
	"testing"
	"time"
)

// WaitFor reads resource namespace/name into out (a pointer to the kind's Go type, zeroed
// before each read) until ok says yes, and fails the test after timeout.
func (f *Client) WaitFor(t testing.TB, timeout time.Duration, resource, namespace, name string, out any, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		reflect.ValueOf(out).Elem().SetZero()
		err := f.Get(context.Background(), resource, namespace, name, out)
		if err == nil && ok() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s/%s: timed out (err %v, last seen %+v)", resource, namespace, name, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
