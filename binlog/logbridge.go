package binlog

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapHandler routes go-mysql's slog output into the tailer's zap logger at
// debug level: the tailer reports connection failures itself, at warn, with
// the peer named.
type zapHandler struct {
	log    *zap.Logger
	fields []zap.Field
	group  string
}

func newSlog(log *zap.Logger) *slog.Logger { return slog.New(zapHandler{log: log}) }

func (h zapHandler) Enabled(context.Context, slog.Level) bool {
	return h.log.Core().Enabled(zapcore.DebugLevel)
}

func (h zapHandler) Handle(_ context.Context, r slog.Record) error {
	fields := append([]zap.Field{}, h.fields...)
	r.Attrs(func(a slog.Attr) bool {
		fields = append(fields, h.field(a))
		return true
	})
	h.log.Debug("go-mysql: "+r.Message, fields...)
	return nil
}

func (h zapHandler) field(a slog.Attr) zap.Field {
	key := a.Key
	if h.group != "" {
		key = h.group + "." + key
	}
	return zap.Any(key, a.Value.Any())
}

func (h zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := h
	n.fields = append(append([]zap.Field{}, h.fields...), make([]zap.Field, 0, len(attrs))...)
	for _, a := range attrs {
		n.fields = append(n.fields, h.field(a))
	}
	return n
}

func (h zapHandler) WithGroup(name string) slog.Handler {
	n := h
	if n.group != "" {
		n.group += "." + name
	} else {
		n.group = name
	}
	return n
}
