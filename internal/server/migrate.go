package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/errs"
	"github.com/rakhsh/rakhsh/internal/store"
	"github.com/rakhsh/rakhsh/internal/store/bolt"
)

// MigratedMarker is the file `rakhsh store migrate` writes in the data dir once its objects
// are in etcd. `rakhsh serve` refuses to start on the bolt store of a data dir that has it:
// the bolt file is then an old copy, and serving it would make two stores that diverge.
const MigratedMarker = "store-migrated-to"

// transientPrefixes are the store keys that are not objects and are not copied: their meaning
// ends with the server that wrote them.
//   - /locks/: quota admission locks, held by a running API server for one write (they expire
//     after seconds; with the source server stopped no holder is left);
//   - /streamtickets/: single-use console/VNC/log tickets that expire within a minute;
//   - /controlplane/: the serve processes' member registrations and election keys, bound to
//     their etcd leases.
//
// Every other key is copied: the objects of every kind, and any key this version does not
// know (copied verbatim, reported as "other").
var transientPrefixes = []string{"/locks/", "/streamtickets/", "/controlplane/"}

// migrateOptions is the validated command line of `rakhsh store migrate`.
type migrateOptions struct {
	DataDir string // from --from bolt:DATA-DIR
	To      string // etcd://... or etcd+https://...
	Etcd    EtcdTLS
	Force   bool
	DryRun  bool
	// LockTimeout is how long to wait for the bolt file lock (0: one second).
	LockTimeout time.Duration
}

// NewStoreCommand returns the `store` command group (store administration).
func NewStoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Administer the object store (move an all-in-one host's objects to etcd)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newStoreMigrateCommand())
	return cmd
}

func newStoreMigrateCommand() *cobra.Command {
	var o migrateOptions
	var from string
	cmd := &cobra.Command{
		Use:   "migrate --from bolt:DATA-DIR --to etcd://HOST:PORT[,...]",
		Short: "Copy every object of an all-in-one host's embedded store into etcd",
		Long: `Copy every object of the embedded bolt store of DATA-DIR into an etcd cluster, so that
the host can run 'rakhsh serve --data-dir DATA-DIR --store etcd://...' and grow into a cluster.

'rakhsh serve' must be stopped first (running VMs keep running: QEMU outlives the server, and
the next serve adopts them). The etcd cluster must hold no Rakhsh object yet; --force deletes
the Rakhsh keys it holds (the /rakhsh/ prefix) first, which is also how a migration that
failed midway is run again.

Objects keep their uid, names, labels, annotations, finalizers, spec and status. They are
written in the order they were created, so their creationRevision (assigned anew by etcd)
orders them as before. Quota locks and stream tickets are not copied. After copying, every
object is read back from etcd and compared; a summary per kind is printed. On success the file
DATA-DIR/` + MigratedMarker + ` records the move, and 'rakhsh serve' refuses to start on the old
bolt store of DATA-DIR (delete that file to override). The bolt file is left as it was.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, ok := strings.CutPrefix(from, "bolt:")
			if !ok || dir == "" {
				return fmt.Errorf("--from %q: want bolt:DATA-DIR (the data dir of the all-in-one rakhsh serve)", from)
			}
			o.DataDir = dir
			return runMigrate(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the source: bolt:DATA-DIR, the data dir of the stopped all-in-one rakhsh serve")
	f.StringVar(&o.To, "to", "", "the target etcd: etcd+https://host:port[,...] or etcd://host:port[,...] (plain http: loopback only unless --insecure-etcd)")
	f.StringVar(&o.Etcd.CA, "etcd-ca", "", "CA bundle (PEM) that signs the etcd servers' certificates (etcd+https; default: the system's roots)")
	f.StringVar(&o.Etcd.Cert, "etcd-cert", "", "client certificate (PEM) for etcd (etcd+https)")
	f.StringVar(&o.Etcd.Key, "etcd-key", "", "private key (PEM) of --etcd-cert")
	f.BoolVar(&o.Etcd.Insecure, "insecure-etcd", false, "accept an etcd:// (plain http) target that is not on loopback")
	f.BoolVar(&o.Force, "force", false, "delete the Rakhsh keys the target already holds before copying (to run a failed migration again)")
	f.BoolVar(&o.DryRun, "dry-run", false, "only count the objects per kind that would be copied, and check the target; write nothing")
	_ = cmd.MarkFlagRequired("from")
	return cmd
}

// checkMigratedMarker refuses the bolt store of a data dir whose objects were moved to etcd.
func checkMigratedMarker(dataDir string) error {
	path := filepath.Join(dataDir, MigratedMarker)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	to, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return fmt.Errorf("the objects of %s were moved to %s by 'rakhsh store migrate': start with --store %s; "+
		"the bolt store here is an old copy (to serve it anyway, knowing that what changed in etcd since is not in it, delete %s)",
		dataDir, to, to, path)
}

// errSourceInUse says the source data dir is served: its store may change under the copy.
var errSourceInUse = errors.New("the source store is in use")

// runMigrate checks that the source is not in use, opens both stores, migrates and, on
// success, writes the marker.
func runMigrate(ctx context.Context, o migrateOptions, out io.Writer) error {
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if o.To == "" && !o.DryRun {
		return errors.New("--to: name the target etcd (etcd+https://host:port[,...] or etcd://host:port[,...])")
	}
	if o.To != "" {
		_, useTLS, err := etcdEndpoints(o.To, o.Etcd.Insecure)
		if err != nil {
			return errors.New(strings.ReplaceAll(err.Error(), "--store", "--to"))
		}
		if !useTLS && (o.Etcd.CA != "" || o.Etcd.Cert != "" || o.Etcd.Key != "") {
			return fmt.Errorf("--etcd-ca, --etcd-cert and --etcd-key apply to an etcd+https:// target, not %q (plain http)", o.To)
		}
	}
	if err := checkMigratedMarker(dir); err != nil {
		return fmt.Errorf("refusing to migrate again: %w", err)
	}
	dbPath := filepath.Join(dir, "rakhsh.db")
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("no bolt store in %s: %w", dir, err)
	}
	stopFirst := fmt.Sprintf("stop 'rakhsh serve' on %s first (its VMs keep running: QEMU outlives the server, and the next serve adopts them)", dir)
	sock := filepath.Join(dir, "rakhsh.sock")
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w: a server answers on %s: %s", errSourceInUse, sock, stopFirst)
	}
	lockTimeout := o.LockTimeout
	if lockTimeout <= 0 {
		lockTimeout = time.Second
	}
	src, err := bolt.Open(dbPath, bolt.Options{LockTimeout: lockTimeout})
	if errors.Is(err, errs.ErrUnavailable) {
		return fmt.Errorf("%w: %s is locked by another process: %s", errSourceInUse, dbPath, stopFirst)
	}
	if err != nil {
		return err
	}
	defer src.Close()

	m := &migration{src: src, force: o.Force, dryRun: o.DryRun, out: out, from: "bolt:" + dir, to: o.To}
	if o.To != "" {
		dst, err := openStore(ctx, Config{DataDir: dir, Store: o.To, Etcd: o.Etcd})
		if err != nil {
			return fmt.Errorf("--to: %w", err)
		}
		defer dst.Close()
		m.dst = dst
	}
	rep, err := m.run(ctx)
	if err != nil {
		return err
	}
	if o.DryRun {
		return nil
	}
	marker := fmt.Sprintf("%s\nmigrated %s: %d objects copied from %s\n", o.To, time.Now().UTC().Format(time.RFC3339), rep.copied, dbPath)
	if err := writeFileSync(filepath.Join(dir, MigratedMarker), []byte(marker)); err != nil {
		return fmt.Errorf("the objects are in etcd and verified, but the marker could not be written (write %q to %s yourself): %w",
			o.To, filepath.Join(dir, MigratedMarker), err)
	}
	tlsFlags := ""
	if o.Etcd != (EtcdTLS{}) {
		tlsFlags = " (with the same --etcd-* flags)"
	}
	fmt.Fprintf(out, "\nDone. Start the server on etcd with the same data dir%s; it adopts the running VMs:\n  rakhsh serve --data-dir %s --store %s\n"+
		"%s is kept unchanged as a backup; %s now keeps 'rakhsh serve' from starting on it.\n", tlsFlags, dir, o.To, dbPath, filepath.Join(dir, MigratedMarker))
	return nil
}

// writeFileSync writes path through a temporary file, synced and renamed into place
// (writeFileAtomic), and syncs its directory, so a crash leaves either no file or the whole
// one.
func writeFileSync(path string, data []byte) error {
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// migration copies every non-transient key of src into dst.
type migration struct {
	src, dst      store.Store
	force, dryRun bool
	out           io.Writer
	from, to      string
	// afterCopy, when set, runs between the copy and the verification (tests use it to
	// damage the target).
	afterCopy func(ctx context.Context) error
}

// migrationReport is what a migration did, per group (a kind, "other" or a transient prefix).
type migrationReport struct {
	groups    map[string]*groupCount
	copied    int
	skipped   int
	rewritten int
	elapsed   time.Duration
}

type groupCount struct {
	source, copied, verified int
	skip                     bool
}

// group names the group of a key: its kind, a transient prefix, or "other".
func keyGroup(key string) (group string, transient bool) {
	for _, p := range transientPrefixes {
		if strings.HasPrefix(key, p) {
			return p + "*", true
		}
	}
	res, _, _ := strings.Cut(strings.TrimPrefix(key, "/"), "/")
	if k, ok := v1alpha1.KindByResource(res); ok {
		return k.Kind, false
	}
	return "other (/" + res + "/)", false
}

// readAll lists every key of st, page by page at one revision.
func readAll(ctx context.Context, st store.Store) ([]store.KV, error) {
	var all []store.KV
	opts := store.ListOptions{Limit: 1000}
	for {
		res, err := st.List(ctx, "", opts)
		if err != nil {
			return nil, err
		}
		all = append(all, res.KVs...)
		if !res.More || len(res.KVs) == 0 {
			return all, nil
		}
		opts.Revision = res.Revision
		opts.After = res.KVs[len(res.KVs)-1].Key
	}
}

func (m *migration) run(ctx context.Context) (*migrationReport, error) {
	start := time.Now()
	rep := &migrationReport{groups: map[string]*groupCount{}}
	kvs, err := readAll(ctx, m.src)
	if err != nil {
		return nil, fmt.Errorf("reading the source store: %w", err)
	}
	// The keys to copy, in the order they were created.
	var plan []store.KV
	for _, kv := range kvs {
		g, transient := keyGroup(kv.Key)
		c := rep.group(g)
		c.source++
		c.skip = transient
		if transient {
			rep.skipped++
			continue
		}
		plan = append(plan, kv)
	}
	sort.SliceStable(plan, func(i, j int) bool { return plan[i].CreateRevision < plan[j].CreateRevision })

	var existing []store.KV
	if m.dst != nil {
		if existing, err = readAll(ctx, m.dst); err != nil {
			return nil, fmt.Errorf("reading the target store: %w", err)
		}
	}
	if m.dryRun {
		fmt.Fprintf(m.out, "Dry run: nothing is written. %s holds %d keys; %d would be copied, %d skipped (transient).\n\n",
			m.from, len(kvs), len(plan), rep.skipped)
		rep.print(m.out, true)
		switch {
		case m.dst == nil:
		case len(existing) == 0:
			fmt.Fprintf(m.out, "\nThe target %s holds no Rakhsh key: the migration can run.\n", m.to)
		case m.force:
			fmt.Fprintf(m.out, "\nThe target %s holds %d Rakhsh keys: --force would delete them first.\n", m.to, len(existing))
		default:
			fmt.Fprintf(m.out, "\nThe target %s holds %d Rakhsh keys: the migration would refuse it (see --force).\n", m.to, len(existing))
		}
		return rep, nil
	}
	if len(existing) > 0 {
		if !m.force {
			return nil, fmt.Errorf("the target %s is not empty: it holds %d Rakhsh keys (e.g. %s); "+
				"a 'rakhsh serve' may already use it, or a migration stopped midway. Pass --force to delete them and copy anew",
				m.to, len(existing), existing[0].Key)
		}
		fmt.Fprintf(m.out, "--force: deleting the %d Rakhsh keys the target holds\n", len(existing))
		for _, kv := range existing {
			if _, _, err := m.dst.Delete(ctx, kv.Key, 0); err != nil && !errors.Is(err, errs.ErrNotFound) {
				return nil, fmt.Errorf("clearing the target: %w", err)
			}
		}
	}

	// Copy in creation order: each Create is one etcd revision, so the new creation revisions
	// keep the old order.
	newCreate := make(map[int64]int64, len(plan))
	want := make(map[string][]byte, len(plan))
	for i, kv := range plan {
		val := rewriteOnCopy(kv.Key, kv.Value)
		rev, err := m.dst.Create(ctx, kv.Key, val)
		if err != nil {
			return nil, fmt.Errorf("copying %s (%d of %d; run again with --force to start over): %w", kv.Key, i+1, len(plan), err)
		}
		newCreate[kv.CreateRevision] = rev
		want[kv.Key] = val
		rep.group(mustGroup(kv.Key)).copied++
		rep.copied++
		if (i+1)%1000 == 0 {
			fmt.Fprintf(m.out, "copied %d of %d\n", i+1, len(plan))
		}
	}
	// Then the values that name creation revisions of other objects get the new ones.
	for _, kv := range plan {
		val, changed := rewriteRevisions(want[kv.Key], newCreate)
		if !changed {
			continue
		}
		cur, err := m.dst.Get(ctx, kv.Key)
		if err != nil {
			return nil, fmt.Errorf("rewriting the revisions named in %s: %w", kv.Key, err)
		}
		if _, err := m.dst.Update(ctx, kv.Key, val, cur.ModRevision); err != nil {
			return nil, fmt.Errorf("rewriting the revisions named in %s: %w", kv.Key, err)
		}
		want[kv.Key] = val
		rep.rewritten++
	}
	if m.afterCopy != nil {
		if err := m.afterCopy(ctx); err != nil {
			return nil, err
		}
	}
	problems, err := m.verify(ctx, plan, want, rep)
	if err != nil {
		return nil, err
	}
	rep.elapsed = time.Since(start)
	fmt.Fprintf(m.out, "Copied %d objects from %s to %s in %s (%d transient keys skipped; revisions named inside %d objects rewritten).\n\n",
		rep.copied, m.from, m.to, rep.elapsed.Round(time.Millisecond), rep.skipped, rep.rewritten)
	rep.print(m.out, false)
	if len(problems) > 0 {
		fmt.Fprintf(m.out, "\nVerification FAILED: %d problems\n", len(problems))
		for i, p := range problems {
			if i == 50 {
				fmt.Fprintf(m.out, "  ... and %d more\n", len(problems)-i)
				break
			}
			fmt.Fprintf(m.out, "  %s\n", p)
		}
		return rep, fmt.Errorf("verification failed: %d problems (first: %s); the marker is not written, so the bolt store stays in use: "+
			"fix the cause and run again with --force", len(problems), problems[0])
	}
	fmt.Fprintf(m.out, "\nVerified: every object is in the target with the same content, in the same creation order.\n")
	return rep, nil
}

func mustGroup(key string) string {
	g, _ := keyGroup(key)
	return g
}

// verify reads the target back and compares it with what was written: the same keys (no
// key missing, none extra), the same bytes (stored values hold no revision fields: the API
// server adds resourceVersion and creationRevision from the store's revisions when it reads),
// and creation revisions in the source's creation order.
func (m *migration) verify(ctx context.Context, plan []store.KV, want map[string][]byte, rep *migrationReport) ([]string, error) {
	got, err := readAll(ctx, m.dst)
	if err != nil {
		return nil, fmt.Errorf("reading the target back: %w", err)
	}
	byKey := make(map[string]store.KV, len(got))
	for _, kv := range got {
		byKey[kv.Key] = kv
	}
	var problems []string
	var prevRev int64
	prevKey := ""
	for _, kv := range plan {
		t, ok := byKey[kv.Key]
		if !ok {
			problems = append(problems, "missing in the target: "+kv.Key)
			continue
		}
		delete(byKey, kv.Key)
		if !bytes.Equal(t.Value, want[kv.Key]) {
			problems = append(problems, "content differs: "+kv.Key+diffHint(want[kv.Key], t.Value))
			continue
		}
		if t.CreateRevision <= prevRev {
			problems = append(problems, fmt.Sprintf("creation order: %s (target creation revision %d) was created before %s in the source, but not in the target (%d)",
				prevKey, prevRev, kv.Key, t.CreateRevision))
			continue
		}
		prevRev, prevKey = t.CreateRevision, kv.Key
		rep.group(mustGroup(kv.Key)).verified++
	}
	extra := make([]string, 0, len(byKey))
	for k := range byKey {
		extra = append(extra, k)
	}
	slices.Sort(extra)
	for _, k := range extra {
		problems = append(problems, "not in the source: "+k)
	}
	return problems, nil
}

// diffHint names where two values first differ.
func diffHint(want, got []byte) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	clip := func(b []byte) string {
		if i >= len(b) {
			return "(end)"
		}
		return strconv.Quote(string(b[i:min(len(b), i+40)]))
	}
	return fmt.Sprintf(" (at byte %d: want %s, got %s)", i, clip(want), clip(got))
}

func (r *migrationReport) group(g string) *groupCount {
	c := r.groups[g]
	if c == nil {
		c = &groupCount{}
		r.groups[g] = c
	}
	return c
}

// print writes one line per group, kinds in the API's order, then the others.
func (r *migrationReport) print(w io.Writer, dryRun bool) {
	var order []string
	for _, k := range v1alpha1.Kinds {
		order = append(order, k.Kind)
	}
	var rest []string
	for g := range r.groups {
		if !slices.Contains(order, g) {
			rest = append(rest, g)
		}
	}
	slices.Sort(rest)
	order = append(order, rest...)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if dryRun {
		fmt.Fprintln(tw, "KIND\tSOURCE\tACTION")
	} else {
		fmt.Fprintln(tw, "KIND\tSOURCE\tCOPIED\tVERIFIED")
	}
	var src, copied, verified int
	for _, g := range order {
		c := r.groups[g]
		if c == nil {
			c = &groupCount{}
		}
		src += c.source
		copied += c.copied
		verified += c.verified
		switch {
		case dryRun && c.skip:
			fmt.Fprintf(tw, "%s\t%d\tskip (transient)\n", g, c.source)
		case dryRun:
			fmt.Fprintf(tw, "%s\t%d\tcopy\n", g, c.source)
		case c.skip:
			fmt.Fprintf(tw, "%s\t%d\tskipped\t-\n", g, c.source)
		default:
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", g, c.source, c.copied, c.verified)
		}
	}
	if dryRun {
		fmt.Fprintf(tw, "TOTAL\t%d\t\n", src)
	} else {
		fmt.Fprintf(tw, "TOTAL\t%d\t%d\t%d\n", src, copied, verified)
	}
	_ = tw.Flush()
}

// Revisions named inside stored values. Stored objects carry no resourceVersion or
// creationRevision of their own, but two places name revisions of other objects:
//
//   - an Event's involvedObject.resourceVersion names a version of the object in the old
//     store's history, which has no counterpart in etcd: it is dropped (no writer sets it
//     today);
//   - the message of a superseded VirtualMachineOperation (its Completed condition, and the
//     Event that reports it) names the creation revisions of the newer operation and of
//     itself: they become the new creation revisions. A revision of an object that no longer
//     exists is left as it was.
var (
	eventRVField   = regexp.MustCompile(`,"resourceVersion":"[0-9]*"`)
	supersededRevs = regexp.MustCompile(`creation revision ([0-9]+), after this one's ([0-9]+)`)
)

// rewriteOnCopy is the value written for key: the source value with the revision references
// that have no counterpart removed.
func rewriteOnCopy(key string, value []byte) []byte {
	if strings.HasPrefix(key, "/events/") && eventRVField.Match(value) {
		return eventRVField.ReplaceAll(value, nil)
	}
	return value
}

// rewriteRevisions maps the creation revisions named in value through newCreate.
func rewriteRevisions(value []byte, newCreate map[int64]int64) ([]byte, bool) {
	if !supersededRevs.Match(value) {
		return value, false
	}
	mapRev := func(s []byte) string {
		old, err := strconv.ParseInt(string(s), 10, 64)
		if n, ok := newCreate[old]; err == nil && ok {
			return strconv.FormatInt(n, 10)
		}
		return string(s)
	}
	out := supersededRevs.ReplaceAllFunc(value, func(m []byte) []byte {
		sub := supersededRevs.FindSubmatch(m)
		return []byte("creation revision " + mapRev(sub[1]) + ", after this one's " + mapRev(sub[2]))
	})
	return out, !bytes.Equal(out, value)
}
