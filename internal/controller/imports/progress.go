// Package imports holds what the disk and image controllers share of their imports: the
// progress they write to an object's status while the data arrives, and the wait for an
// upload.
package imports

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/rakhsh/rakhsh/api/v1alpha1"
	"github.com/rakhsh/rakhsh/client"
	"github.com/rakhsh/rakhsh/internal/images"
)

// Progress writes an import's progress to the status of an object: its download speed and,
// when known, its percentage, with a merge patch at most every half Interval.
type Progress struct {
	Client   client.Interface
	Resource string
	Object   *v1alpha1.ObjectMeta
	Interval time.Duration
	// Log gets the failed writes (at debug level); nil: they are not logged.
	Log *slog.Logger
	// Fields, when not nil, adds fields of its own to the status patch.
	Fields func(p images.Progress, status map[string]any)
}

// Options returns the options of the import, whose writes end with ctx; what it unpacks is
// bounded by maxUnpacked.
func (pr Progress) Options(ctx context.Context, maxUnpacked int64) images.Options {
	var last time.Time
	return images.Options{ProgressInterval: pr.Interval, MaxUnpackedSize: maxUnpacked, Progress: func(p images.Progress) {
		if time.Since(last) < pr.Interval/2 {
			return
		}
		last = time.Now()
		s := map[string]any{"downloadSpeed": v1alpha1.DownloadSpeed{Avg: images.HumanSpeed(p.AvgBPS), AvgBytes: p.AvgBPS,
			Current: images.HumanSpeed(p.CurrentBPS), CurrentBytes: p.CurrentBPS}}
		if pct := p.Percent(); pct != "" {
			s["progress"] = pct
		}
		if pr.Fields != nil {
			pr.Fields(p, s)
		}
		patch, _ := json.Marshal(map[string]any{"status": s})
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := pr.Client.PatchStatus(pctx, pr.Resource, pr.Object.Namespace, pr.Object.Name, patch, nil)
		if err != nil && ctx.Err() == nil && pr.Log != nil {
			pr.Log.Debug("writing progress", "err", err)
		}
	}}
}

// WaitMessage is the condition message of an object that waits up to timeout for its upload.
func WaitMessage(timeout time.Duration) string {
	return fmt.Sprintf("waiting for the file: PUT it to status.imageUploadURLs (curl -T FILE URL, or rakhsh image upload) within %s", timeout)
}

// UploadChecksum is the checksum an Upload data source expects of its file, if any.
func UploadChecksum(u *v1alpha1.DataSourceUpload) *v1alpha1.Checksum {
	if u == nil {
		return nil
	}
	return u.Checksum
}
