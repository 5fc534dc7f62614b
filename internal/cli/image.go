package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
)

func newImageCommand(cc *cliContext) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Work with image and disk files (upload)",
	}
	cmd.AddCommand(newImageUploadCommand(cc))
	return cmd
}

func newImageUploadCommand(cc *cliContext) *cobra.Command {
	var waitURL time.Duration
	var noProgress bool
	cmd := &cobra.Command{
		Use:   "upload KIND/NAME FILE",
		Short: "Upload FILE to an image or disk whose data source is Upload",
		Long: `Upload FILE to a ClusterVirtualImage, VirtualImage or VirtualDisk created with
dataSource.type Upload. The command waits for the object's upload URL, sends the file over the
connection to the API server (the unix socket or --server) and returns when the server has
checked and stored the image. The file may be qcow2, raw, vmdk, vdi, vhd, vhdx or iso, each also
gzip- or xz-compressed.

Examples:
  rakhsh image upload cvi/debian-12 debian-12.qcow2
  rakhsh -n research image upload vd/scratch disk.vmdk.xz`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kindName, name, ok := strings.Cut(args[0], "/")
			if !ok || name == "" {
				return usageErrorf("name the object as KIND/NAME, e.g. cvi/debian-12; got %q", args[0])
			}
			k, err := lookupKind(kindName)
			if err != nil {
				return err
			}
			switch k.Kind {
			case "ClusterVirtualImage", "VirtualImage", "VirtualDisk":
			default:
				return usageErrorf("only ClusterVirtualImages, VirtualImages and VirtualDisks take uploads, not %s", k.Kind)
			}
			f, err := os.Open(args[1])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", args[1])
			}
			c, err := cc.Client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ns := scopeNS(k, cc.Namespace())
			path, err := waitUploadPath(ctx, c, k.Resource, ns, name, ref(k, name), waitURL)
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			tty := false
			if fe, ok := stderr.(*os.File); ok && !noProgress {
				tty = term.IsTerminal(int(fe.Fd()))
			}
			start := time.Now()
			err = putFile(ctx, c, path, f, fi.Size(), stderr, tty)
			if errors.Is(err, errUploadDelivered) {
				fmt.Fprintf(stderr, "%v; waiting for %s to be stored\n", err, ref(k, name))
				err = waitUploadStored(ctx, c, k.Resource, ns, name)
			}
			if err != nil {
				return fmt.Errorf("uploading %s to %s: %w", args[1], ref(k, name), err)
			}
			el := time.Since(start)
			fmt.Fprintf(cmd.OutOrStdout(), "%s: uploaded %s (%s in %s, %s)\n", ref(k, name), args[1],
				images.HumanBytes(fi.Size()), el.Round(100*time.Millisecond), images.HumanSpeed(int64(float64(fi.Size())/max(el.Seconds(), 0.001))))
			return nil
		},
	}
	cmd.Flags().DurationVar(&waitURL, "timeout", 2*time.Minute, "how long to wait for the object's upload URL")
	cmd.Flags().BoolVar(&noProgress, "no-progress", false, "do not draw a progress bar")
	return cmd
}

// uploadTarget is what an upload reads of the image or disk it goes to.
type uploadTarget struct {
	Status struct {
		Phase           string `json:"phase"`
		ImageUploadURLs *struct {
			External  string `json:"external"`
			InCluster string `json:"inCluster"`
		} `json:"imageUploadURLs"`
		Conditions []struct {
			Type, Message string
		} `json:"conditions"`
	} `json:"status"`
}

// waitUploadStored waits until an object whose whole upload arrived is Ready (nil) or Failed
// (its Ready condition's message).
func waitUploadStored(ctx context.Context, c *client.Client, resource, ns, name string) error {
	return poll(ctx, 500*time.Millisecond, func() (bool, error) {
		var obj uploadTarget
		if err := c.Get(ctx, resource, ns, name, &obj); err != nil {
			return false, err
		}
		switch obj.Status.Phase {
		case "Ready":
			return true, nil
		case "Failed":
			for _, cd := range obj.Status.Conditions {
				if cd.Type == "Ready" {
					return true, errors.New(cd.Message)
				}
			}
			return true, errors.New("the upload failed")
		}
		return false, nil
	}, sameError)
}

// waitUploadPath waits until the object publishes an upload URL and returns its path.
func waitUploadPath(ctx context.Context, c *client.Client, resource, ns, name, what string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var path string
	err := poll(ctx, 300*time.Millisecond, func() (bool, error) {
		var obj uploadTarget
		if err := c.Get(ctx, resource, ns, name, &obj); err != nil {
			return false, err
		}
		st := obj.Status
		if st.ImageUploadURLs != nil {
			if tok := images.UploadToken(st.ImageUploadURLs.External); tok != "" {
				path = images.UploadPathPrefix + tok
				return true, nil
			}
		}
		switch st.Phase {
		case "Ready", "Failed", "Terminating":
			msg := ""
			for _, cd := range st.Conditions {
				if cd.Type == "Ready" && cd.Message != "" {
					msg = ": " + cd.Message
				}
			}
			return false, fmt.Errorf("%s is %s and takes no upload%s", what, st.Phase, msg)
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("%s published no upload URL within %s (phase %q); is its dataSource.type Upload?", what, timeout, st.Phase)
		}
		return false, nil
	}, sameError)
	return path, err
}

// uploadAttempts is how often putFile sends a file whose connection broke: each time from the
// byte the server has taken (HEAD, Upload-Offset), after a pause that doubles from one second.
var (
	uploadAttempts = 9 // the pauses add up to over 4 minutes: longer than a cut request can hold the upload
	uploadPause    = time.Second
)

// errUploadDelivered says the whole file reached the server but the answer did not come back
// (the connection broke while the server checked and stored it).
var errUploadDelivered = errors.New("the whole file arrived, but the connection broke before the server answered")

// putFile PUTs size bytes of f to path on the API server, drawing a progress bar on w. When
// the connection breaks, it asks the server how much arrived and sends the rest (a resumable
// upload, see images.Uploads).
func putFile(ctx context.Context, c *client.Client, path string, f io.ReaderAt, size int64, w io.Writer, tty bool) error {
	tr := &http.Transport{
		DialContext:    func(ctx context.Context, _, _ string) (net.Conn, error) { return c.DialRaw(ctx) },
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.DialRaw(ctx) },
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	url := c.BaseURL() + path
	var sent atomic.Int64
	done := make(chan struct{})
	barDone := make(chan struct{})
	go func() {
		defer close(barDone)
		if !tty {
			<-done
			return
		}
		start := time.Now()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintf(w, "\r%s\n", progressBar(sent.Load(), size, time.Since(start)))
				return
			case <-t.C:
				fmt.Fprintf(w, "\r%s", progressBar(sent.Load(), size, time.Since(start)))
			}
		}
	}()
	defer func() {
		close(done)
		<-barDone
	}()
	pause := uploadPause
	var lastErr error
	for attempt := 1; ; attempt++ {
		off := int64(0)
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
			pause *= 2
			var err error
			off, err = uploadOffset(ctx, hc, url)
			switch {
			case err != nil && sent.Load() == size:
				return errUploadDelivered // the server took it all and no longer waits
			case err != nil:
				return fmt.Errorf("%v; resuming the upload: %v", lastErr, err)
			case off == size:
				return errUploadDelivered
			}
		}
		sent.Store(off)
		// A reader of its own for each attempt: the transport may still read the last one.
		body := &countingReader{r: io.NewSectionReader(f, off, size-off), n: &sent}
		code, msg, err := putPiece(ctx, hc, url, body, off, size)
		switch {
		case err == nil && code == http.StatusOK:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil && code != http.StatusConflict:
			return errors.New(msg)
		case attempt >= uploadAttempts:
			if err == nil {
				err = errors.New(msg)
			}
			return fmt.Errorf("%w (after %d attempts)", err, attempt)
		case err != nil:
			lastErr = err
			fmt.Fprintf(w, "\nthe upload broke off after %s (%v); resuming\n", images.HumanBytes(sent.Load()), err)
		default:
			lastErr = errors.New(msg) // 409: the cut request still holds the upload, or another byte
		}
	}
}

// putPiece sends the bytes of r from off to the end of a file of size bytes (the whole file
// without a Content-Range when off is 0), and returns the answer's status and text.
func putPiece(ctx context.Context, hc *http.Client, url string, r io.Reader, off, size int64) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, r)
	if err != nil {
		return 0, "", err
	}
	req.ContentLength = size - off
	req.Header.Set("Content-Type", "application/octet-stream")
	if off > 0 {
		req.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, size-1, size))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	text := strings.TrimSpace(string(msg))
	if text == "" {
		text = resp.Status
	}
	return resp.StatusCode, text, nil
}

// uploadOffset asks the server how much of the upload at url it has taken.
func uploadOffset(ctx context.Context, hc *http.Client, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("the server no longer waits for it (%s)", resp.Status)
	}
	n, err := strconv.ParseInt(resp.Header.Get(images.HeaderUploadOffset), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the server does not say where it resumes (%s: %v)", images.HeaderUploadOffset, err)
	}
	return n, nil
}

// progressBar renders "[=========>          ]  45%  120Mi/260Mi  50Mi/s".
func progressBar(n, total int64, el time.Duration) string {
	const width = 30
	pct := int64(100)
	if total > 0 {
		pct = min(n*100/total, 100)
	}
	fill := int(pct * width / 100)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	speed := int64(0)
	if s := el.Seconds(); s > 0 {
		speed = int64(float64(n) / s)
	}
	return fmt.Sprintf("[%s] %3d%%  %s/%s  %s  ", bar, pct, images.HumanBytes(n), images.HumanBytes(total), images.HumanSpeed(speed))
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
