package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/internal/apiserver"
)

// newAuditCommand returns `rakhsh audit tail`: the last lines of the audit log of the serve on
// this host, read from its data dir (the file is root's, mode 0600); and `rakhsh audit get`,
// the same over the API.
func newAuditCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log: the file of the serve on this host (tail), or over the API (get)",
		Run:   func(cmd *cobra.Command, _ []string) { _ = cmd.Help() },
	}
	var dataDir, file string
	var lines int
	var follow bool
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Print the last lines of DATA-DIR/audit.log (JSON lines); -f follows it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				file = filepath.Join(dataDir, "audit.log")
			}
			return tailFile(cmd.Context(), cmd.OutOrStdout(), file, lines, follow)
		},
	}
	f := tail.Flags()
	f.StringVar(&dataDir, "data-dir", "/var/lib/rakhsh", "the data dir of the serve whose audit log is read")
	f.StringVar(&file, "file", "", "the audit log file (default DATA-DIR/audit.log)")
	f.IntVar(&lines, "lines", 20, "how many of the last lines to print")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing lines as they are written (until interrupted)")
	cmd.AddCommand(tail, newAuditGetCommand(cc))
	return cmd
}

// newAuditGetCommand returns `rakhsh audit get`: the newest lines of the audit log of the API
// server the CLI talks to, over the API (a ClusterAdmin's).
func newAuditGetCommand(cc *cliContext) *cobra.Command {
	var user, project, since, output string
	var limit int
	cmd := &cobra.Command{
		Use:   "get",
		Short: "Print the newest audit lines of the API server, newest first (ClusterAdmin)",
		Long: `Read the audit log over the API: the newest lines of the log of the API server this
command talks to (each serve keeps its own), newest first, optionally only those of a user, a
project or since a time. Needs the ClusterAdmin role.`,
		Example: "  rakhsh audit get --user alice --limit 50\n  rakhsh audit get --project p1 --since 2026-12-05T06:00:00Z -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" {
				return usageErrorf("-o %s: only json is known", output)
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			for k, v := range map[string]string{"user": user, "project": project, "since": since} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var list apiserver.AuditList
			if err := c.Do(cmd.Context(), "GET", v1alpha1.IdentityPath+"/audit", q, "", nil, &list); err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tIDENTITY\tSOURCE\tVERB\tOBJECT\tCODE\tREQUEST")
			for _, e := range list.Items {
				obj := e.Resource
				if e.Namespace != "" {
					obj += " " + e.Namespace + "/" + e.Name
				} else if e.Name != "" {
					obj += " " + e.Name
				}
				if e.Sub != "" {
					obj += " (" + e.Sub + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", e.Time.UTC().Format(time.RFC3339), printable(e.Identity), printable(e.Source),
					printable(e.Verb), printable(obj), e.Code, printable(e.RequestID))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d lines of the audit log of %s\n", len(list.Items), list.Server)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&user, "user", "", "only the lines of this user (or identity)")
	f.StringVar(&project, "project", "", "only the lines of this project")
	f.StringVar(&since, "since", "", "only lines at or after this time (RFC 3339)")
	f.IntVar(&limit, "limit", 100, "at most this many lines (1 to 5000)")
	f.StringVarP(&output, "output", "o", "", "json: the lines as JSON")
	return cmd
}

// tailFile prints the last n lines of path, then, with follow, what is appended (a rotated
// file is followed by its new file).
func tailFile(ctx context.Context, w io.Writer, path string, n int, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer func() { f.Close() }()
	var last []string
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			last = append(last, line)
			if len(last) > n {
				last = last[1:]
			}
		}
		if err != nil {
			break
		}
	}
	for _, l := range last {
		fmt.Fprint(w, l)
	}
	if !follow {
		return nil
	}
	pos, _ := f.Seek(0, io.SeekCurrent)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
		if st, err := os.Stat(path); err == nil && st.Size() < pos {
			// rotated: read the new file from its start
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			f.Close()
			f, pos = nf, 0
		}
		if _, err := f.Seek(pos, io.SeekStart); err != nil {
			return err
		}
		data, _ := io.ReadAll(f)
		if i := lastNewline(data); i >= 0 {
			w.Write(data[:i+1])
			pos += int64(i + 1)
		}
	}
}

func lastNewline(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			return i
		}
	}
	return -1
}

// printable is s as it may go to a terminal: a value with control characters, tabs or
// newlines (a caller chooses paths and names) is shown quoted, so that it can neither forge
// rows nor send escape sequences.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\t' {
			return strconv.Quote(s)
		}
	}
	return s
}
