// Package tracing follows a write from the application to its apply in
// every region with OpenTelemetry.
//
// The proxy makes a span per statement, a child of the client's trace when
// the client sends a W3C traceparent (in a query comment, sqlcommenter
// style, or as the connection attribute "traceparent"). A sampled write
// carries its span's context to the peers through the binlog: the proxy
// adds @_mlr_tp to the stamping SET it sends anyway, and the table's
// trigger writes it once per statement into mlr.traces, in the same
// transaction. A peer's tailer reads that row like the checkpoint marker
// and the applier makes its span a child of it. Prepared statements are
// carried the same way (their text in the binlog cannot be changed per
// execution); nothing is added to an unsampled write.
//
// Spans go to a collector over OTLP/HTTP. With tracing off the proxy holds
// a nil Tracer and tests it once per command: nothing else runs.
package tracing

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproxy/mlproxy/config"
)

// Instrumentation scope names of the two span sources.
const (
	ScopeProxy   = "github.com/mlproxy/mlproxy/proxy"
	ScopeApplier = "github.com/mlproxy/mlproxy/applier"
)

// Provider owns the exporter; a nil *Provider is tracing off.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// Start builds the provider cfg describes for region, or returns nil, nil
// when cfg.Endpoint is empty. Spans are batched and exported in the
// background; a collector that is down costs dropped spans, never a
// blocked statement (the batch queue is bounded and drops when full).
//
// The SDK's own errors (an export the collector refused or could not
// take) go to onError, which the caller logs: the SDK would print them as
// plain text on stderr, outside the JSON log.
func Start(cfg config.Tracing, region string, onError func(error)) (*Provider, error) {
	if cfg.Endpoint == "" {
		return nil, nil
	}
	if onError != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(onError))
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithTimeout(5 * time.Second)}
	if strings.Contains(cfg.Endpoint, "://") {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("tracing.endpoint %s: %w", cfg.Endpoint, err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces" // OTLP/HTTP's path; "/" would be refused by every collector
		}
		opts = append(opts, otlptracehttp.WithEndpointURL(u.String()))
	} else {
		opts = append(opts, otlptracehttp.WithEndpoint(cfg.Endpoint))
	}
	switch {
	case cfg.TLS != nil:
		tc, err := config.Server{Addr: hostPort(cfg.Endpoint), TLS: cfg.TLS}.TLSConfig()
		if err != nil {
			return nil, fmt.Errorf("tracing.tls: %w", err)
		}
		opts = append(opts, otlptracehttp.WithTLSClientConfig(tc))
	case cfg.Insecure:
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing.endpoint %s: %w", cfg.Endpoint, err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "mlproxy"
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", name),
		attribute.String("service.instance.id", region),
		attribute.String("mlproxy.region", region),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithMaxQueueSize(8192), sdktrace.WithBatchTimeout(time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.Ratio()))),
	)
	return &Provider{tp: tp}, nil
}

// NewProvider wraps an SDK provider (tests: an in-memory exporter).
func NewProvider(tp *sdktrace.TracerProvider) *Provider { return &Provider{tp: tp} }

// Tracer returns the named tracer, nil when p is nil (tracing off).
func (p *Provider) Tracer(scope string) trace.Tracer {
	if p == nil {
		return nil
	}
	return p.tp.Tracer(scope)
}

// Shutdown exports what is queued, within ctx.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.tp.Shutdown(ctx)
}

func hostPort(endpoint string) string {
	if i := strings.Index(endpoint, "://"); i >= 0 {
		endpoint = endpoint[i+3:]
	}
	if i := strings.IndexByte(endpoint, '/'); i >= 0 {
		endpoint = endpoint[:i]
	}
	return endpoint
}

// TraceparentLen is the length of a version-00 W3C traceparent:
// "00-" 32 hex "-" 16 hex "-" 2 hex.
const TraceparentLen = 55

// Parse reads a version-00 W3C traceparent. It accepts only lower-case
// hex, as the specification does, and refuses the all-zero ids.
func Parse(s string) (trace.SpanContext, bool) {
	if len(s) != TraceparentLen || s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if !lowerHex(s[3:35]) || !lowerHex(s[36:52]) || !lowerHex(s[53:55]) {
		return trace.SpanContext{}, false
	}
	_, _ = hex.Decode(tid[:], []byte(s[3:35]))
	_, _ = hex.Decode(sid[:], []byte(s[36:52]))
	_, _ = hex.Decode(flags[:], []byte(s[53:55]))
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags[0]) & trace.FlagsSampled, Remote: true,
	})
	return sc, sc.IsValid()
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Format is sc as a version-00 traceparent.
func Format(sc trace.SpanContext) string {
	b := make([]byte, 0, TraceparentLen)
	b = append(b, "00-"...)
	tid, sid := sc.TraceID(), sc.SpanID()
	b = hex.AppendEncode(b, tid[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, sid[:])
	if sc.IsSampled() {
		b = append(b, "-01"...)
	} else {
		b = append(b, "-00"...)
	}
	return string(b)
}

// FromSQL finds a traceparent in a statement's comment, as sqlcommenter
// writes it (/*traceparent='00-…-01'*/, anywhere in the text) or as
// key=value without quotes. It returns "" when there is none or it is
// malformed. Only the text inside a /* */ comment counts. One pass over
// the comments: linear in the statement's length, whatever it holds.
func FromSQL(sql string) string {
	for i := 0; i < len(sql); {
		open := strings.Index(sql[i:], "/*")
		if open < 0 {
			return ""
		}
		body := sql[i+open+2:]
		end := strings.Index(body, "*/")
		if end >= 0 {
			body = body[:end]
		}
		if tp := inComment(body); tp != "" {
			return tp
		}
		if end < 0 {
			return ""
		}
		i += open + 2 + end + 2
	}
	return ""
}

// inComment is the first well-formed traceparent=... in a comment's text.
func inComment(body string) string {
	const key = "traceparent="
	for {
		k := strings.Index(body, key)
		if k < 0 {
			return ""
		}
		body = body[k+len(key):]
		v := body
		if strings.HasPrefix(v, "'") || strings.HasPrefix(v, `"`) {
			v = v[1:]
		}
		if len(v) >= TraceparentLen {
			if _, ok := Parse(v[:TraceparentLen]); ok {
				return v[:TraceparentLen]
			}
		}
	}
}
