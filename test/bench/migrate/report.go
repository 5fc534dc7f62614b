package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"

	"github.com/rakhsh/rakhsh/test/bench/internal/benchhost"
)

// report prints, per case, median [min–max] over the completed runs.
func report(o options, cs []caseSpec, all []result) {
	fmt.Printf("\n== runs\n\n")
	for _, r := range all {
		fmt.Printf("%s #%d: %s\n", r.Case, r.Run, r)
	}
	fmt.Printf("\n== results: median [min–max] over the completed runs\n\n")
	fmt.Println("| case | max-bandwidth | completed | total-time (QEMU), ms | migrate → completed (wall), ms | migrate → target running, ms | downtime (QEMU), ms | pause STOP→RESUME, ms | RAM transferred, MiB | dirty-sync iterations | max CPU throttle, % |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, c := range cs {
		var done, stuck []result
		n := 0
		for _, r := range all {
			if r.Case != c.Name {
				continue
			}
			n++
			switch r.Status {
			case "completed":
				done = append(done, r)
			case "not-converged":
				stuck = append(stuck, r)
			}
		}
		if n == 0 {
			continue
		}
		count := fmt.Sprintf("%d/%d", len(done), n)
		if len(stuck) > 0 {
			count += fmt.Sprintf(" (%d not converged in %s)", len(stuck), o.timeout)
		}
		atCancel := len(done) == 0 && len(stuck) > 0
		if atCancel {
			// Show what the cancelled runs did up to the timeout.
			done = stuck
			count += ": figures at cancel"
		}
		f := func(get func(result) float64, prec int) string {
			return spreadOf(done, get, prec)
		}
		// g is f for the figures a cancelled run does not have.
		g := func(get func(result) float64, prec int) string {
			if atCancel {
				return "–"
			}
			return f(get, prec)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.Name, bwString(c.Bandwidth), count,
			f(func(r result) float64 { return float64(r.TotalMS) }, 0),
			f(func(r result) float64 { return r.WallMS }, 0),
			g(func(r result) float64 { return r.TargetRunningMS }, 0),
			g(func(r result) float64 { return float64(r.DowntimeMS) }, 0),
			g(func(r result) float64 { return r.PauseMS }, 0),
			f(func(r result) float64 { return float64(r.Transferred) / (1 << 20) }, 1),
			f(func(r result) float64 { return float64(r.Iterations) }, 0),
			f(func(r result) float64 { return float64(r.MaxThrottle) }, 0))
	}
	fmt.Printf("\nload:   %s (1/5/15 min, after the run)\n", benchhost.LoadAvg())
}

func spreadOf(rs []result, get func(result) float64, prec int) string {
	var v []float64
	for _, r := range rs {
		v = append(v, get(r))
	}
	return spread(v, prec)
}

// spread formats median [min–max]; the median of an even count is the mean of the middle two.
func spread(v []float64, prec int) string {
	if len(v) == 0 {
		return "–"
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if len(s) == 1 {
		return fmt.Sprintf("%.*f", prec, med)
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, med, prec, s[0], prec, s[len(s)-1])
}

func numCPU() int { return runtime.NumCPU() }

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.IndexByte(l, ':'); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return "?"
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func qemuVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "? (" + err.Error() + ")"
	}
	return strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
}
