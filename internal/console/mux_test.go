package console

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestMuxSharesSerial(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "mux")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, SerialSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	guest := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			guest <- c
		}
	}()
	var outputs atomic.Int32
	m := &Mux{RunDir: dir, LogLimit: 64, OnOutput: func() { outputs.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	g := <-guest
	dial := func() net.Conn {
		for i := 0; i < 100; i++ {
			c, err := net.Dial("unix", filepath.Join(dir, ConsoleSocket))
			if err == nil {
				return c
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("console socket never appeared")
		return nil
	}
	a, b := dial(), dial()
	defer a.Close()
	defer b.Close()
	time.Sleep(100 * time.Millisecond) // both registered
	if n := outputs.Load(); n != 0 {
		t.Fatalf("OnOutput called %d times before the guest wrote", n)
	}
	if _, err := g.Write([]byte("RAKHSH-GUEST: ready\n")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{a, b} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "RAKHSH-GUEST: ready\n" {
			t.Fatalf("client got %q, %v", line, err)
		}
	}
	for i := 0; outputs.Load() == 0; i++ { // called just after the clients got the output
		if i == 250 {
			t.Fatal("the guest wrote, and OnOutput was not called")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := b.Write([]byte("echo hi\n")); err != nil {
		t.Fatal(err)
	}
	_ = g.SetReadDeadline(time.Now().Add(5 * time.Second))
	in, err := bufio.NewReader(g).ReadString('\n')
	if err != nil || in != "echo hi\n" {
		t.Fatalf("guest got %q, %v", in, err)
	}
	// Past the limit the log rotates; ReadLog returns both parts, newest last.
	for i := 0; i < 5; i++ {
		_, _ = g.Write([]byte("0123456789abcdef\n"))
	}
	time.Sleep(200 * time.Millisecond)
	logged, err := ReadLog(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, LogFile+".1")); err != nil {
		t.Fatalf("log did not rotate: %v", err)
	}
	if !strings.HasSuffix(string(logged), "0123456789abcdef\n") || len(logged) > 2*64+20 {
		t.Fatalf("log is %d bytes: %q", len(logged), logged)
	}
	tail, _ := ReadLog(dir, 10)
	if len(tail) != 10 {
		t.Fatalf("limited read gave %d bytes", len(tail))
	}
	// The guest going away ends the mux and its clients.
	g.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mux ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("mux did not end when the serial socket closed")
	}
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(a); err != nil {
		t.Fatalf("client not closed cleanly: %v", err)
	}
}
