package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// clockOffsetEnv names a file whose content (a Go duration: "10s", "-2s")
// is added to this process's wall clock, re-read every 100 ms. It exists
// for fault-injection tests (`make chaos`, the clock fence test): a Go
// binary reads time through the vDSO, so libfaketime cannot skew it, and
// skewing the host's clock would skew every region on the machine. It is
// never needed in production; mlproxy warns at start when it is set.
const clockOffsetEnv = "MLPROXY_CLOCK_OFFSET_FILE"

// wallClock is the wall clock of this process: time.Now, shifted by the
// offset file when clockOffsetEnv is set. The reader stops with ctx.
func wallClock(ctx context.Context, log *zap.Logger) (func() time.Time, error) {
	path := os.Getenv(clockOffsetEnv)
	if path == "" {
		return time.Now, nil
	}
	var off atomic.Int64
	read := func() error {
		b, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			off.Store(0)
			return nil
		}
		if err != nil {
			return err
		}
		text := strings.TrimSpace(string(b))
		if text == "" {
			off.Store(0)
			return nil
		}
		d, err := time.ParseDuration(text)
		if err != nil {
			return fmt.Errorf("%s %s: %w", clockOffsetEnv, path, err)
		}
		if prev := time.Duration(off.Swap(int64(d))); prev != d {
			log.Warn("test clock offset changed", zap.Duration("offset", d), zap.Duration("was", prev))
		}
		return nil
	}
	if err := read(); err != nil {
		return nil, err
	}
	log.Warn("the wall clock is shifted by a test offset file; never set this in production",
		zap.String("env", clockOffsetEnv), zap.String("file", path))
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := read(); err != nil {
					log.Warn("test clock offset file unreadable; keeping the last offset", zap.Error(err))
				}
			}
		}
	}()
	return func() time.Time { return time.Now().Add(time.Duration(off.Load())) }, nil
}
