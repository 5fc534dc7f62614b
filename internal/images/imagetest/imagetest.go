// Package imagetest makes small image files (qcow2, raw, ISO, hostile qcow2s) for tests with
// the real tools, and serves them over HTTP on 127.0.0.1.
package imagetest

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rakhsh/rakhsh/internal/images"
)

// Need fails the test when a tool is missing, saying which Debian package has it.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	pkgs := map[string]string{"qemu-img": "qemu-utils", "prlimit": "util-linux", "xorriso": "xorriso", "curl": "curl", "gzip": "gzip", "xz": "xz-utils"}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for this test: apt-get install %s", tool, pkgs[tool])
		}
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// QCOW2 makes a qcow2 image of size (e.g. "64M") in dir with some data written at its
// start, and returns its path.
func QCOW2(t testing.TB, dir, name, size string) string {
	t.Helper()
	Need(t, "qemu-img")
	raw := Raw(t, dir, name+".src.raw", 1<<20)
	p := filepath.Join(dir, name)
	run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, p)
	run(t, "qemu-img", "resize", "-q", "-f", "qcow2", p, size)
	os.Remove(raw)
	return p
}

// Raw makes a raw disk of n bytes (n a multiple of 512) with a recognisable pattern in its
// first megabyte.
func Raw(t testing.TB, dir, name string, n int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pat := make([]byte, min(n, 1<<20))
	for i := range pat {
		pat[i] = byte(i*7 + 1)
	}
	if _, err := f.Write(pat); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(n); err != nil {
		t.Fatal(err)
	}
	return p
}

// ISO makes an ISO 9660 image with one file and returns its path.
func ISO(t testing.TB, dir, name string) string {
	t.Helper()
	Need(t, "xorriso")
	src := filepath.Join(dir, name+".d")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "README.TXT"), []byte("rakhsh test iso\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	run(t, "xorriso", "-as", "mkisofs", "-quiet", "-V", "TEST", "-o", p, src)
	return p
}

// WithBacking makes a qcow2 overlay whose backing file is a host file (what a hostile
// upload would do to read /etc/shadow).
func WithBacking(t testing.TB, dir, name string) string {
	t.Helper()
	base := QCOW2(t, dir, name+".base", "16M")
	return create(t, filepath.Join(dir, name), "16M", "-f", "qcow2", "-F", "qcow2", "-b", base)
}

// create makes the image p with qemu-img create -q, the options opts and the size (none
// when ""), and returns p.
func create(t testing.TB, p, size string, opts ...string) string {
	t.Helper()
	Need(t, "qemu-img")
	args := append(append([]string{"create", "-q"}, opts...), p)
	if size != "" {
		args = append(args, size)
	}
	run(t, "qemu-img", args...)
	return p
}

// WithDataFile makes a qcow2 with an external data file (OSSA-2024-001).
func WithDataFile(t testing.TB, dir, name string) string {
	t.Helper()
	return create(t, filepath.Join(dir, name), "16M", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, name+".data"))
}

// VMDK makes a VMDK image.
func VMDK(t testing.TB, dir, name string) string {
	t.Helper()
	return create(t, filepath.Join(dir, name), "16M", "-f", "vmdk")
}

// AllowLoopback is the network policy of imports from test servers: loopback addresses are
// allowed, as with serve --allow-import-from 127.0.0.0/8,::1/128.
func AllowLoopback() *images.NetworkPolicy {
	return &images.NetworkPolicy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
}

// Serve serves dir over HTTP on 127.0.0.1 until the test ends and returns the base URL. It
// allows imports from loopback addresses in the test's process from then on (the default
// network policy, as serve --allow-import-from 127.0.0.0/8 would), so that controllers that
// import with the default policy can reach it; tests of the policy itself name their own.
func Serve(t testing.TB, dir string) string {
	t.Helper()
	images.SetDefaultNetworkPolicy(AllowLoopback())
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Convert makes dst (in dir) from the raw file src with qemu-img convert -O format plus the
// given options (e.g. "subformat=streamOptimized"), and returns its path.
func Convert(t testing.TB, src, dir, name, format string, opts ...string) string {
	t.Helper()
	Need(t, "qemu-img")
	p := filepath.Join(dir, name)
	args := []string{"convert", "-q", "-f", "raw", "-O", format}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	run(t, "qemu-img", append(args, src, p)...)
	return p
}

// Gzip writes p+".gz" with gzip(1) and returns its path; the original stays.
func Gzip(t testing.TB, p string) string {
	t.Helper()
	Need(t, "gzip")
	run(t, "gzip", "-k", "-f", "-1", p)
	return p + ".gz"
}

// Xz writes p+".xz" with xz(1) and returns its path; the original stays.
func Xz(t testing.TB, p string) string {
	t.Helper()
	Need(t, "xz")
	run(t, "xz", "-k", "-f", "-0", "-T1", p)
	return p + ".xz"
}

// VMDKDescriptor makes a VMDK descriptor file (a text file) whose flat extent is target, a
// host file the descriptor would make qemu-img read.
func VMDKDescriptor(t testing.TB, dir, name, target string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
		"# Extent description\nRW 2048 FLAT \"" + target + "\" 0\n\nddb.virtualHWVersion = \"4\"\n"
	if err := os.WriteFile(p, []byte(desc), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// VMDKWithParent makes a sparse VMDK whose embedded descriptor names a parent file.
func VMDKWithParent(t testing.TB, dir, name string) string {
	t.Helper()
	base := create(t, filepath.Join(dir, name+".parent.vmdk"), "16M", "-f", "vmdk")
	return create(t, filepath.Join(dir, name), "", "-f", "vmdk", "-F", "vmdk", "-b", base)
}

// JSONBacking makes a qcow2 whose backing file is a json: name that opens a host file.
func JSONBacking(t testing.TB, dir, name, target string) string {
	t.Helper()
	return create(t, filepath.Join(dir, name), "16M", "-u", "-f", "qcow2", "-F", "raw",
		"-b", `json:{"driver":"raw","file":{"driver":"file","filename":"`+target+`"}}`)
}
