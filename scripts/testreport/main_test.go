package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestReport: a passing test's output is dropped, a failing one's printed with its subtest's,
// package results pass through, the slowest list is ordered, and the exit code says failed.
func TestReport(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestOK"}`,
		`{"Action":"output","Package":"p","Test":"TestOK","Output":"    a_test.go:3: quiet\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestOK","Elapsed":2.5}`,
		`{"Action":"output","Package":"p","Test":"TestBad/sub","Output":"    a_test.go:4: boom\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestBad/sub","Elapsed":0.1}`,
		`{"Action":"output","Package":"p","Test":"TestBad","Output":"--- FAIL: TestBad (7.00s)\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestBad","Elapsed":7}`,
		`{"Action":"output","Package":"p","Output":"FAIL\tp\t9.5s\n"}`,
		`{"Action":"fail","Package":"p","Elapsed":9.5}`,
		`# p [build failed]`,
	}, "\n") + "\n"
	var out bytes.Buffer
	code, err := report(strings.NewReader(in), &out, 10)
	if err != nil || code != 1 {
		t.Fatalf("code %d err %v, want 1", code, err)
	}
	got := out.String()
	for _, want := range []string{"boom", "--- FAIL: TestBad", "FAIL\tp\t9.5s", "# p [build failed]", "== the 2 slowest tests"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "quiet") {
		t.Errorf("a passing test's output was printed:\n%s", got)
	}
	if i, j := strings.Index(got, "p TestBad\n"), strings.Index(got, "p TestOK\n"); i < 0 || j < 0 || i > j {
		t.Errorf("slowest list not ordered by time:\n%s", got)
	}

	// An end-to-end test is ranked by its time in its lane slot, not by its wait for it.
	out.Reset()
	in = strings.Join([]string{
		`{"Action":"output","Package":"e","Test":"TestWaited","Output":"    serve_test.go:210: lane: slot taken after waiting 1m30s\n"}`,
		`{"Action":"pass","Package":"e","Test":"TestWaited","Elapsed":100}`,
		`{"Action":"pass","Package":"e","Test":"TestLong","Elapsed":50}`,
		`{"Action":"output","Package":"e","Test":"TestModes/process","Output":"    serve_test.go:210: lane: slot taken after waiting 0s\n"}`,
		`{"Action":"pass","Package":"e","Test":"TestModes/process","Elapsed":30}`,
		`{"Action":"pass","Package":"e","Test":"TestModes/sub","Elapsed":40}`,
		`{"Action":"pass","Package":"e","Test":"TestModes","Elapsed":0.1}`,
		`{"Action":"pass","Package":"e","Elapsed":150}`,
	}, "\n") + "\n"
	if code, _ := report(strings.NewReader(in), &out, 10); code != 0 {
		t.Errorf("code %d", code)
	}
	if got := out.String(); !strings.Contains(got, "    50.0s  pass  e TestLong\n    30.0s  pass  e TestModes/process\n    10.0s  pass  e TestWaited  (and 90s waiting for a lane slot)\n") ||
		strings.Contains(got, "TestModes/sub") {
		t.Errorf("lane waits:\n%s", got)
	}

	out.Reset()
	code, _ = report(strings.NewReader(`{"Action":"pass","Package":"p","Elapsed":1}`+"\n"), &out, 10)
	if code != 0 {
		t.Errorf("an all-pass run gave code %d", code)
	}
	code, _ = report(strings.NewReader("no events at all\n"), &out, 10)
	if code != 1 {
		t.Errorf("input without any result gave code %d, want 1", code)
	}
	out.Reset()
	code, _ = report(strings.NewReader(`{"Action":"output","Package":"p","Test":"TestHang","Output":"still going\n"}`+"\n"+`{"Action":"fail","Package":"p","Elapsed":1}`+"\n"), &out, 10)
	if code != 1 || !strings.Contains(out.String(), "TestHang, which did not finish") || !strings.Contains(out.String(), "still going") {
		t.Errorf("an unfinished test: code %d output %q", code, out.String())
	}
}
