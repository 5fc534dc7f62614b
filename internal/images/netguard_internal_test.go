package images

import (
	"context"
	"errors"
	"net"
	"testing"
)

// The Control hook refuses on the socket itself, whatever resolved the address.
func TestDialerControlRefuses(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	d := &net.Dialer{Control: (&NetworkPolicy{}).control}
	_, err = d.DialContext(context.Background(), "tcp", l.Addr().String())
	var re *RefusedError
	if !errors.As(err, &re) || re.Class != "a loopback address" {
		t.Fatalf("got %v, want a refusal of the loopback address", err)
	}
	select {
	case <-accepted:
		t.Fatal("the connection was made")
	default:
	}
}
