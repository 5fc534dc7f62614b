// Command testreport reads `go test -json` on its standard input and prints what a plain
// `go test` prints (the output of failed tests and each package's result line), followed by
// the slowest tests, so that a CI log shows where the suite's time goes. A test that logs
// "lane: slot taken after waiting D" (the end-to-end tests' lanes) is ranked by its time
// without that wait, which is shown beside it. It exits 1 when a test or package failed, or
// when the input had no result at all.
//
//	go test -json ./... | go run ./scripts/testreport [-slowest 30]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type result struct {
	name    string
	elapsed float64 // without waited
	waited  float64 // seconds spent waiting for a lane slot
	action  string
}

// laneWait is the line an end-to-end test logs when it gets its lane slot.
var laneWait = regexp.MustCompile(`lane: slot taken after waiting (\S+)`)

// waitedIn returns the lane wait a test's output reports, in seconds, and whether it
// reports one.
func waitedIn(lines []string) (float64, bool) {
	for _, l := range lines {
		if m := laneWait.FindStringSubmatch(l); m != nil {
			d, err := time.ParseDuration(m[1])
			return max(d.Seconds(), 0), err == nil
		}
	}
	return 0, false
}

func main() {
	slowest := flag.Int("slowest", 30, "how many of the slowest tests to list")
	flag.Parse()
	code, err := report(os.Stdin, os.Stdout, *slowest)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func report(in io.Reader, out io.Writer, slowest int) (int, error) {
	buf := map[string][]string{} // package/test → output lines so far
	var results []result
	failed, sawResult := false, false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, string(line)) // not an event (a build error): pass it on
			continue
		}
		key := e.Package + "/" + e.Test
		switch e.Action {
		case "output":
			if e.Test == "" {
				// Package-level output: its result line, build failures, panics outside tests.
				if !strings.HasPrefix(e.Output, "=== ") && !strings.HasPrefix(e.Output, "PASS\n") {
					fmt.Fprint(out, e.Output)
				}
				continue
			}
			buf[key] = append(buf[key], e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				sawResult = true
				if e.Action == "fail" {
					failed = true
				}
				continue
			}
			if e.Action == "fail" {
				failed = true
				fmt.Fprint(out, strings.Join(buf[key], ""))
			}
			// Top-level tests, and subtests that held a lane slot of their own (the serve
			// modes of one end-to-end test body: their parent's time stops while they run).
			if w, inLane := waitedIn(buf[key]); !strings.Contains(e.Test, "/") || inLane {
				w = min(w, e.Elapsed)
				results = append(results, result{name: e.Package + " " + e.Test, elapsed: e.Elapsed - w, waited: w, action: e.Action})
			}
			delete(buf, key)
		}
	}
	if err := sc.Err(); err != nil {
		return 1, err
	}
	// Tests still running when the input ended (a timeout's panic): show what they printed.
	var unfinished []string
	for key := range buf {
		unfinished = append(unfinished, key)
	}
	sort.Strings(unfinished)
	for _, key := range unfinished {
		fmt.Fprintf(out, "--- output of %s, which did not finish:\n%s", key, strings.Join(buf[key], ""))
		failed = true
	}
	sort.Slice(results, func(i, j int) bool { return results[i].elapsed > results[j].elapsed })
	if len(results) > slowest {
		results = results[:slowest]
	}
	fmt.Fprintf(out, "== the %d slowest tests\n", len(results))
	for _, r := range results {
		fmt.Fprintf(out, "%8.1fs  %-4s  %s", r.elapsed, r.action, r.name)
		if r.waited > 0 {
			fmt.Fprintf(out, "  (and %.0fs waiting for a lane slot)", r.waited)
		}
		fmt.Fprintln(out)
	}
	if failed || !sawResult {
		return 1, nil
	}
	return 0, nil
}
