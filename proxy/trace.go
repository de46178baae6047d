package proxy

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pingcap/tidb/pkg/parser"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproxy/mlproxy/tracing"
)

// stmtSpan is the span of one proxied statement (tracing on only). It
// carries the statement's digest, kind, tables and stamp, never a value.
type stmtSpan struct {
	span    trace.Span
	sampled bool
	stamped bool // a replicated write: it has a stamp
}

// startSpan starts the span of a statement (sql: its text, or a prepared
// statement's) classified as cl, a child of the client's trace when the
// statement's comment or the connection names one. nil when tracing is
// off.
func (c *conn) startSpan(sql string, cl *class, fromComment bool) *stmtSpan {
	t := c.s.cfg.Tracer
	if t == nil {
		return nil
	}
	ctx := c.ctx
	parent := ""
	if fromComment {
		parent = tracing.FromSQL(sql)
	}
	if parent == "" {
		parent = c.traceparent
	}
	if sc, ok := tracing.Parse(parent); ok {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	} else {
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{}) // a root
	}
	_, sp := t.Start(ctx, "mlproxy "+kindLabel(cl), trace.WithSpanKind(trace.SpanKindServer))
	s := &stmtSpan{span: sp, sampled: sp.SpanContext().IsSampled()}
	c.failed = false
	c.span = s
	if !sp.IsRecording() {
		return s
	}
	attrs := []attribute.KeyValue{
		attribute.String("db.system.name", "mariadb"),
		attribute.String("mlproxy.region", c.s.cfg.RegionName),
		attribute.String("mlproxy.kind", kindLabel(cl)),
	}
	if text, digest := spanDigest(sql); digest != "" {
		// The normalized text has every literal replaced by '?'.
		attrs = append(attrs, attribute.String("db.query.summary", text), attribute.String("mlproxy.digest", digest))
	}
	if cl != nil && len(cl.writes) > 0 {
		tables := make([]string, 0, len(cl.writes))
		for _, w := range cl.writes {
			tables = append(tables, validText(w.schema+"."+w.table, 256))
		}
		attrs = append(attrs, attribute.StringSlice("db.collection.name", tables))
	}
	sp.SetAttributes(attrs...)
	return s
}

// written marks the statement a replicated write (stamped says so) and
// returns the traceparent a sampled one takes to the peers: the span's own
// context, so their applies are its children; "" otherwise.
func (s *stmtSpan) written(c *conn, stamped bool) string {
	if s == nil {
		return ""
	}
	s.stamped = stamped
	if !s.sampled || !stamped {
		return ""
	}
	if !c.s.carried.allow(time.Now().Unix(), c.s.cfg.MaxCarried) {
		c.s.m.carryDropped.Inc()
		return ""
	}
	return tracing.Format(s.span.SpanContext())
}

// carryLimit counts the trace contexts carried in the current second.
type carryLimit struct {
	sec atomic.Int64
	n   atomic.Int64
}

// allow counts one more in second now and says whether it is within max
// (0 = 1000). A second's first caller resets the count; two callers
// racing at the boundary may let a few more through, never fewer.
func (l *carryLimit) allow(now int64, max int) bool {
	if max <= 0 {
		max = 1000
	}
	if l.sec.Load() != now {
		l.sec.Store(now)
		l.n.Store(0)
	}
	return l.n.Add(1) <= int64(max)
}

// end closes the span with the stamp the write got and whether the server
// answered with an error.
func (s *stmtSpan) end(c *conn) {
	if s == nil {
		return
	}
	c.span = nil
	if s.span.IsRecording() {
		if s.stamped && c.stamp != 0 {
			s.span.SetAttributes(attribute.String("mlproxy.stamp", strconv.FormatUint(c.stamp, 10)))
		}
		if c.failed {
			s.span.SetStatus(codes.Error, "the server answered with an error")
		}
	}
	s.span.End()
}

// validText is s cut to at most max bytes at a character boundary, with
// invalid UTF-8 replaced: the OTLP encoding refuses invalid strings, and
// one would lose the whole export batch it is in.
func validText(s string, max int) string {
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// spanDigest is sql's normalized text (literals as '?', at most 1 KiB)
// and its digest; "" when the lexer cannot read it.
func spanDigest(sql string) (text, digest string) {
	defer func() {
		if recover() != nil {
			text, digest = "", ""
		}
	}()
	n, d := parser.NormalizeDigest(sql)
	return validText(n, 1024), d.String()
}

func kindLabel(cl *class) string {
	if cl == nil {
		return "unknown"
	}
	switch cl.kind {
	case kindRead:
		return labelRead
	case kindSession:
		return labelSession
	case kindDDL:
		return labelDDL
	case kindWrite:
		return "write"
	case kindWriteUnknown:
		return labelWriteUnknown
	case kindRefused:
		return labelRefused
	}
	return "other"
}
