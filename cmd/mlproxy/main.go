// Command mlproxy runs one region of multi-leader MySQL/MariaDB replication:
// the SQL proxy that stamps writes, a binlog tailer and an applier per peer,
// and the operator commands (schema, status).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/internal/logx"
	"github.com/mlproxy/mlproxy/redact"
)

// version is set at build time with -ldflags "-X main.version=..." (see
// version.go for commit, date and the fallback to Go's build info).
var version = "dev"

// errProblems makes the process exit 1 after a command already printed what
// is wrong (schema check).
var errProblems = errors.New("problems found")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// The driver's own unstructured lines (a reset connection) would
	// interleave with the CLI's output; their errors are returned anyway.
	_ = mysql.SetLogger(driverLog{})
	root := &cobra.Command{
		Use:           "mlproxy",
		Short:         "Multi-leader replication for MySQL and MariaDB",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), schemaCmd(), statusCmd(), conflictsCmd(), checksumCmd(), linkCmd(), strongCmd(), regionCmd(), versionCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		if !errors.Is(err, errProblems) {
			fmt.Fprintln(os.Stderr, "mlproxy:", err)
		}
		os.Exit(1)
	}
}

// configFlag adds -c/--config to cmd.
func configFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "region.yaml", "the region's YAML configuration")
}

// newLogger logs JSON lines to stderr at the configured level, every line
// carrying the region; a warning or error repeated within log.repeat_window
// is counted and written once as a count (logx.LimitRepeats; Sync writes
// the pending counts).
func newLogger(cfg *config.Config) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil {
		return nil, fmt.Errorf("%s: log.level: %w", cfg.Path, err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := zc.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return logx.LimitRepeats(c, logx.Options{Window: cfg.Log.RepeatWindow})
	}))
	if err != nil {
		return nil, err
	}
	log = log.With(zap.String("region", cfg.Region.Name))
	_ = mysql.SetLogger(driverLog{log.Named("mysql")})
	redact.AllowValues(cfg.Log.Values)
	if cfg.Log.Values {
		log.Warn("log.values is on: server error messages in logs and /status may quote row values")
	}
	return log, nil
}

// driverLog sends go-sql-driver's messages to the JSON log at debug level
// (nil logger: dropped).
type driverLog struct{ log *zap.Logger }

func (d driverLog) Print(v ...any) {
	if d.log != nil {
		d.log.Debug(fmt.Sprint(v...))
	}
}
