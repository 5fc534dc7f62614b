package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

// newAuditCommand returns `rakhsh audit tail`: the last lines of the audit log of the serve on
// this host, read from its data dir (the file is root's, mode 0600).
func newAuditCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log of the server on this host",
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
	cmd.AddCommand(tail)
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
