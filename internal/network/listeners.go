package network

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// hostListeners returns the TCP ports that sockets of this network namespace listen on and
// the UDP ports they are bound to, as "tcp/22" and "udp/53": a port forward on such a port
// would take the service's traffic away from it (DNAT happens before the socket sees it).
func hostListeners() (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range []struct{ path, proto, state string }{
		{"/proc/net/tcp", "tcp", "0A"}, {"/proc/net/tcp6", "tcp", "0A"}, // LISTEN
		{"/proc/net/udp", "udp", "07"}, {"/proc/net/udp6", "udp", "07"}, // bound, unconnected
	} {
		fh, err := os.Open(f.path)
		if os.IsNotExist(err) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		err = parseSockets(fh, f.proto, f.state, out)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.path, err)
		}
	}
	return out, nil
}

// parseSockets reads a /proc/net/{tcp,udp}[6] table: after a header line, one socket per line,
// "sl local_address rem_address st ...", the local address as HEXADDR:HEXPORT.
func parseSockets(r io.Reader, proto, state string, out map[string]bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != state {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			return fmt.Errorf("malformed local address %q", f[1])
		}
		port, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil {
			return fmt.Errorf("malformed port in %q", f[1])
		}
		out[fmt.Sprintf("%s/%d", proto, port)] = true
	}
	return sc.Err()
}
