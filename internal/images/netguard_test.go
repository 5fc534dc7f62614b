package images_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rakhsh/rakhsh/internal/images"
	"github.com/rakhsh/rakhsh/internal/images/imagetest"
)

// counting serves body and counts the requests it got.
func counting(body []byte, hits *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
}

// serveOn starts an HTTP server on a loopback addr ("127.0.0.2:0").
func serveOn(t *testing.T, addr string, h http.Handler) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func wantRefused(t *testing.T, err error, class string) {
	t.Helper()
	var ie *images.Error
	if !errors.As(err, &ie) || ie.Reason != images.ReasonImportRefused || ie.Transient {
		t.Fatalf("got %v, want the permanent reason %s", err, images.ReasonImportRefused)
	}
	for _, s := range []string{" refused", class, "--allow-import-from"} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("the message %q does not say %q", err, s)
		}
	}
}

func TestImportRefusesLoopback(t *testing.T) {
	var hits atomic.Int64
	secret := serveOn(t, "127.0.0.1:0", counting([]byte("the secret of the host"), &hits))
	dst := filepath.Join(t.TempDir(), "img")
	url := secret.URL + "/secret"
	_, err := images.ImportHTTP(context.Background(), images.HTTPSource{URL: url}, dst, images.Options{Network: &images.NetworkPolicy{}})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
	want := "import from " + url + " refused: 127.0.0.1 is a loopback address; an operator may allow it with serve --allow-import-from"
	if err.Error() != want {
		t.Errorf("message\n%s\nwant\n%s", err, want)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests", n)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the image file exists: %v", err)
	}
	// The same through the default policy (no allow-list).
	images.SetDefaultNetworkPolicy(nil)
	t.Cleanup(func() { images.SetDefaultNetworkPolicy(nil) })
	_, err = images.ImportHTTP(context.Background(), images.HTTPSource{URL: url}, dst, images.Options{})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
}

// Internal destinations are refused before anything is sent: these addresses are never
// connected to (the test needs no network).
func TestImportRefusesInternalAddresses(t *testing.T) {
	for _, tc := range []struct{ url, class string }{
		{"http://10.1.2.3:8080/x", "10.1.2.3 is a private address"},
		{"http://172.20.0.1/x", "172.20.0.1 is a private address"},
		{"https://192.168.1.1/x", "192.168.1.1 is a private address"},
		{"http://100.64.0.7/x", "100.64.0.7 is a carrier-grade NAT"},
		{"http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"},
		{"http://169.254.10.1/x", "169.254.10.1 is a link-local address"},
		{"http://0.0.0.0:9/x", "0.0.0.0 is an unspecified"},
		{"http://224.0.0.1/x", "224.0.0.1 is a multicast address"},
		{"http://[::1]:9/x", "::1 is a loopback address"},
		{"http://[::]:9/x", ":: is an unspecified address"},
		{"http://[fd12:3456::1]/x", "fd12:3456::1 is a private (unique local) address"},
		{"http://[fd00:ec2::254]/latest/", "fd00:ec2::254 is a cloud metadata address"},
		{"http://[fe80::1]/x", "fe80::1 is a link-local address"},
		{"http://[ff02::1]/x", "ff02::1 is a multicast address"},
		{"http://[::ffff:127.0.0.1]:9/x", "127.0.0.1 is a loopback address"},
		{"http://[64:ff9b::a00:1]/x", "64:ff9b::a00:1 is a private address (behind NAT64)"},
		{"http://2130706433:9/x", "127.0.0.1 is a loopback address"}, // decimal 127.0.0.1, as some resolvers read it
	} {
		t.Run(tc.url, func(t *testing.T) {
			policy := &images.NetworkPolicy{LookupNetIP: func(_ context.Context, host string) ([]netip.Addr, error) {
				if host == "2130706433" {
					return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
				}
				return nil, fmt.Errorf("unexpected lookup of %q", host)
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := images.ImportHTTP(ctx, images.HTTPSource{URL: tc.url}, filepath.Join(t.TempDir(), "img"), images.Options{Network: policy})
			wantRefused(t, err, tc.class)
		})
	}
}

// A server the operator allowed redirects to one that is not: the redirect is refused.
func TestImportRefusesRedirectToLoopback(t *testing.T) {
	var secretHits, mirrorHits atomic.Int64
	secret := serveOn(t, "127.0.0.1:0", counting([]byte("the secret of the host"), &secretHits))
	mirror := serveOn(t, "127.0.0.2:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mirrorHits.Add(1)
		http.Redirect(w, r, secret.URL+"/secret", http.StatusFound)
	}))
	policy := &images.NetworkPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
	_, err := images.ImportHTTP(context.Background(), images.HTTPSource{URL: mirror.URL + "/disk.raw"}, filepath.Join(t.TempDir(), "img"),
		images.Options{Network: policy})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
	if !strings.Contains(err.Error(), "redirected to "+secret.URL+"/secret") {
		t.Errorf("the message does not name the redirect: %v", err)
	}
	if mirrorHits.Load() != 1 || secretHits.Load() != 0 {
		t.Fatalf("the allowed server got %d requests (want 1), the refused one %d (want 0)", mirrorHits.Load(), secretHits.Load())
	}
}

// A name that resolves to an allowed address first and to a refused one the next time (DNS
// rebinding) is checked on the address dialled each time.
func TestImportDNSRebinding(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	src := t.TempDir()
	disk, err := os.ReadFile(imagetest.Raw(t, src, "disk.raw", 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var mirrorHits, secretHits atomic.Int64
	mirror := serveOn(t, "127.0.0.2:0", counting(disk, &mirrorHits))
	_, port, _ := net.SplitHostPort(mirror.Listener.Addr().String())
	// The refused server listens on the same port of 127.0.0.1, so that only the name's
	// address tells them apart.
	serveOn(t, "127.0.0.1:"+port, counting([]byte("the secret of the host"), &secretHits))

	var lookups atomic.Int64
	policy := &images.NetworkPolicy{
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}, // stands for a public address
		LookupNetIP: func(_ context.Context, host string) ([]netip.Addr, error) {
			if host != "images.rebind.test" {
				return nil, fmt.Errorf("unexpected lookup of %q", host)
			}
			if lookups.Add(1) == 1 {
				return []netip.Addr{netip.MustParseAddr("127.0.0.2")}, nil
			}
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		},
	}
	url := "http://images.rebind.test:" + port + "/disk.raw"
	dir := t.TempDir()
	ctx := context.Background()
	res, err := images.ImportHTTP(ctx, images.HTTPSource{URL: url}, filepath.Join(dir, "first"), images.Options{Network: policy})
	if err != nil {
		t.Fatalf("the first import (the name resolves to an allowed address): %v", err)
	}
	if res.VirtualSize != 1<<20 || mirrorHits.Load() != 1 {
		t.Fatalf("the first import got %d bytes, %d requests to the allowed server", res.VirtualSize, mirrorHits.Load())
	}
	_, err = images.ImportHTTP(ctx, images.HTTPSource{URL: url}, filepath.Join(dir, "second"), images.Options{Network: policy})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
	if secretHits.Load() != 0 {
		t.Fatalf("the refused server got %d requests", secretHits.Load())
	}
	if lookups.Load() != 2 {
		t.Fatalf("%d lookups, want one per import", lookups.Load())
	}
}

func TestImportFromAllowedNetwork(t *testing.T) {
	imagetest.Need(t, "qemu-img")
	src := t.TempDir()
	imagetest.Raw(t, src, "disk.raw", 1<<20)
	base := imagetest.Serve(t, src)
	for _, allow := range []string{"127.0.0.0/8", "127.0.0.1/32"} {
		p, err := images.ParseAllowList([]string{"10.0.0.0/8," + allow})
		if err != nil {
			t.Fatal(err)
		}
		res, err := images.ImportHTTP(context.Background(), images.HTTPSource{URL: base + "/disk.raw"}, filepath.Join(t.TempDir(), "img"),
			images.Options{Network: &images.NetworkPolicy{Allow: p}})
		if err != nil || res.VirtualSize != 1<<20 {
			t.Fatalf("allowed %s: %v", allow, err)
		}
	}
	_, err := images.ImportHTTP(context.Background(), images.HTTPSource{URL: base + "/disk.raw"}, filepath.Join(t.TempDir(), "img"),
		images.Options{Network: &images.NetworkPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
}

// A registry import dials through the same guard.
func TestImportOCIRefusesLoopback(t *testing.T) {
	var hits atomic.Int64
	reg := serveOn(t, "127.0.0.1:0", counting([]byte("{}"), &hits))
	host := strings.TrimPrefix(reg.URL, "http://")
	_, err := images.ImportOCI(context.Background(), images.OCISource{Image: host + "/images/debian:12"}, filepath.Join(t.TempDir(), "img"),
		images.Options{Network: &images.NetworkPolicy{}})
	wantRefused(t, err, "127.0.0.1 is a loopback address")
	if hits.Load() != 0 {
		t.Fatalf("the registry got %d requests", hits.Load())
	}
}

func TestParseAllowList(t *testing.T) {
	got, err := images.ParseAllowList([]string{"10.0.0.0/8, 192.168.7.9/24", "::1/128", ""})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[10.0.0.0/8 192.168.7.0/24 ::1/128]" {
		t.Fatalf("got %v", got)
	}
	for _, bad := range []string{"10.0.0.1", "10.0.0.0/33", "mirror.example.com/24", "10.0.0.0/8,,x"} {
		_, err := images.ParseAllowList([]string{bad})
		if err == nil || !strings.Contains(err.Error(), "--allow-import-from") || !strings.Contains(err.Error(), "not a CIDR") {
			t.Errorf("%q: got %v, want an error naming the flag", bad, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for addr, want := range map[string]string{
		"8.8.8.8":                "",
		"2001:4860::8888":        "",
		"100.128.0.1":            "", // just past CGNAT
		"172.32.0.1":             "", // just past 172.16/12
		"127.255.255.254":        "a loopback address",
		"100.127.255.255":        "a carrier-grade NAT (shared) address",
		"169.254.169.254":        "a cloud metadata address",
		"::ffff:169.254.169.254": "a cloud metadata address",
		"::1%lo":                 "a loopback address",
		"fe80::1%eth0":           "a link-local address",
		"fd12::5%eth0":           "a private (unique local) address",
		"fd00:ec2::254%eth0":     "a cloud metadata address",
		"64:ff9b:1::a00:1":       "a local-use NAT64 address",
		"2002:7f00:1::":          "a loopback address (inside a 6to4 address)",
		"2002:808:808::1":        "", // 6to4 of the public 8.8.8.8
		"::127.0.0.1":            "an IPv4-compatible IPv6 address",
		"fc00::1":                "a private (unique local) address",
		"255.255.255.255":        "a reserved (or broadcast) address",
	} {
		if got := images.Classify(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
}
