package qmp_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/rakhsh/rakhsh/internal/qemu/qmp"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := qmp.Dial(ctx, "/run/rakhsh/vm-1/qmp.sock", qmp.WithDefaultTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	events, unsubscribe := c.Subscribe(16)
	defer unsubscribe()
	go func() {
		for ev := range events { // ends with qmp.EventDisconnected
			fmt.Println("event", ev.Name, string(ev.Data))
		}
	}()

	st, err := c.QueryStatus(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if st.Status == qmp.StatusPrelaunch {
		if err := c.Cont(ctx); err != nil {
			log.Fatal(err)
		}
	}
	if err := c.Execute(ctx, "device_del", map[string]string{"id": "nic1"}, nil); qmp.IsCommandError(err, qmp.ClassDeviceNotFound) {
		fmt.Println("no such device")
	}
}
