//go:build !cgo

package backup

import (
	goruntime "runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// level is the zstd level of the chunks: zstd's default, as `zstd` compresses by default.
const level = 3

var (
	encOnce sync.Once
	enc     *zstd.Encoder
)

// compress compresses a chunk into one zstd frame with the pure Go encoder, for binaries
// built without cgo (about two thirds of the C library's speed). The result is valid until
// release is called.
func compress(data []byte) (z []byte, release func(), err error) {
	encOnce.Do(func() {
		// SpeedDefault is about zstd level 3. EncodeAll takes one of the encoder's
		// instances: as many as BackupDisk's workers. Fails with none of these options.
		enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(goruntime.GOMAXPROCS(0)+1))
	})
	return enc.EncodeAll(data, make([]byte, 0, len(data)/2)), func() {}, nil
}
