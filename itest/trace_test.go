package itest

import (
	"compress/gzip"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// collected is one span an OTLP/HTTP receiver got: its ids, name, scope
// and attributes (resource and span, as strings).
type collected struct {
	traceID, spanID, parent string
	name, scope             string
	attrs                   map[string]string
}

// otlpReceiver is an in-memory collector: it accepts OTLP/HTTP protobuf
// exports (what every region's exporter sends) and keeps the spans.
type otlpReceiver struct {
	addr string
	mu   sync.Mutex
	got  []collected
}

func startReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(r.export), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

func (r *otlpReceiver) export(w http.ResponseWriter, req *http.Request) {
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ex coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &ex); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	for _, rs := range ex.ResourceSpans {
		res := map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			res[kv.Key] = anyString(kv.Value)
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				c := collected{
					traceID: hex.EncodeToString(sp.TraceId), spanID: hex.EncodeToString(sp.SpanId),
					parent: hex.EncodeToString(sp.ParentSpanId), name: sp.Name, scope: ss.GetScope().GetName(),
					attrs: map[string]string{},
				}
				for k, v := range res {
					c.attrs[k] = v
				}
				for _, kv := range sp.Attributes {
					c.attrs[kv.Key] = anyString(kv.Value)
				}
				r.got = append(r.got, c)
			}
		}
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, anyString(e))
		}
		return strings.Join(parts, ",")
	}
	return ""
}

// trace returns the spans of traceID received so far.
func (r *otlpReceiver) trace(traceID string) []collected {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []collected
	for _, c := range r.got {
		if c.traceID == traceID {
			out = append(out, c)
		}
	}
	return out
}

// TestTraceAcrossRegions: a write with a client-supplied traceparent at
// eu yields, at an OTLP collector, eu's proxy span (a child of the
// client's) and an apply span in us and in ap, children of eu's span, all
// under the client's trace id. Once for a text statement with the
// context in its comment (sqlcommenter style), once for a prepared
// statement on a connection that sent it as a connection attribute.
// Sampling is 0: only the client's sampled context makes spans.
func TestTraceAcrossRegions(t *testing.T) {
	recv := startReceiver(t)
	c := startCluster(t, cluster.Options{Extra: fmt.Sprintf(`tracing:
  endpoint: "http://%s/v1/traces"
  insecure: true
  sample_ratio: 0
`, recv.addr)})
	eu := c.Regions[0]

	check := func(t *testing.T, traceID, clientSpan string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			spans := recv.trace(traceID)
			var proxySpan *collected
			for i, s := range spans {
				if s.scope == "github.com/mlproxy/mlproxy/proxy" && s.attrs["mlproxy.region"] == "eu" && s.attrs["mlproxy.kind"] == "write" {
					proxySpan = &spans[i]
				}
			}
			applied := map[string]collected{}
			if proxySpan != nil {
				for _, s := range spans {
					if s.scope == "github.com/mlproxy/mlproxy/applier" && s.parent == proxySpan.spanID {
						applied[s.attrs["mlproxy.region"]] = s
					}
				}
			}
			if proxySpan != nil && len(applied) == 2 {
				if proxySpan.parent != clientSpan {
					t.Errorf("eu's proxy span has parent %s, want the client's span %s", proxySpan.parent, clientSpan)
				}
				if proxySpan.attrs["mlproxy.stamp"] == "" || !strings.Contains(proxySpan.attrs["db.query.summary"], "app") {
					t.Errorf("eu's proxy span lacks its stamp or statement summary: %v", proxySpan.attrs)
				}
				for _, s := range []string{proxySpan.attrs["db.query.summary"], proxySpan.attrs["mlproxy.digest"]} {
					if strings.Contains(s, "secret-value") {
						t.Errorf("a span attribute carries the statement's value: %q", s)
					}
				}
				for _, region := range []string{"us", "ap"} {
					a, ok := applied[region]
					if !ok {
						t.Errorf("no apply span from %s under trace %s", region, traceID)
						continue
					}
					if a.attrs["mlproxy.peer"] != "eu" || a.attrs["mlproxy.lag_seconds"] == "" {
						t.Errorf("%s's apply span: peer %q, lag %q; want peer eu and a lag", region, a.attrs["mlproxy.peer"], a.attrs["mlproxy.lag_seconds"])
					}
				}
				return
			}
			if time.Now().After(deadline) {
				var names []string
				for _, s := range spans {
					names = append(names, s.scope+" "+s.name+" region="+s.attrs["mlproxy.region"]+" parent="+s.parent)
				}
				t.Fatalf("trace %s after 30 s: proxy span found=%v, apply spans from %d regions; spans:\n%s",
					traceID, proxySpan != nil, len(applied), strings.Join(names, "\n"))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	t.Run("text comment", func(t *testing.T) {
		db := openProxy(t, eu, 1)
		traceID, span := "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		q := fmt.Sprintf("/*traceparent='00-%s-%s-01'*/ INSERT INTO app.kv (k, v, n) VALUES (7001, 'secret-value', 1)", traceID, span)
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
		check(t, traceID, span)
	})

	t.Run("prepared with connection attribute", func(t *testing.T) {
		traceID, span := "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
		cfg, err := mysql.ParseDSN(eu.DSN("app"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnectionAttributes = "traceparent:00-" + traceID + "-" + span + "-01"
		connector, err := mysql.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(connector)
		defer db.Close()
		stmt, err := db.Prepare("INSERT INTO app.kv (k, v, n) VALUES (?, ?, ?)")
		if err != nil {
			t.Fatal(err)
		}
		defer stmt.Close()
		if _, err := stmt.Exec(7002, "secret-value", 2); err != nil {
			t.Fatal(err)
		}
		check(t, traceID, span)
	})

	// An unsampled write (no client context, ratio 0) carries nothing:
	// no trace rows are written for it.
	t.Run("unsampled carries nothing", func(t *testing.T) {
		d := openDirect(t, eu)
		var before int
		if err := d.QueryRow("SELECT COUNT(*) FROM mlr.traces").Scan(&before); err != nil {
			t.Fatal(err)
		}
		if _, err := openProxy(t, eu, 1).Exec("INSERT INTO app.kv (k, v, n) VALUES (7003, 'x', 3)"); err != nil {
			t.Fatal(err)
		}
		var after int
		if err := d.QueryRow("SELECT COUNT(*) FROM mlr.traces").Scan(&after); err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Errorf("an unsampled write added %d rows to mlr.traces", after-before)
		}

		// A sampled write that changes no row leaves its context unused:
		// the next write, unsampled, in the same transaction (it reuses
		// the stamp: no stamping SET) must not carry it.
		db := openProxy(t, eu, 1)
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("/*traceparent='00-11111111111111111111111111111111-2222222222222222-01'*/ UPDATE app.kv SET n = n + 1 WHERE k = -1"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("INSERT INTO app.kv (k, v, n) VALUES (7004, 'x', 4)"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		var stale int
		if err := d.QueryRow("SELECT COUNT(*) FROM mlr.traces WHERE traceparent LIKE '00-1111%'").Scan(&stale); err != nil {
			t.Fatal(err)
		}
		if stale != 0 {
			t.Errorf("a later unsampled write carried the context of a sampled write that changed no row (%d carrier rows)", stale)
		}
	})
}
