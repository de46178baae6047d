package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mlproxy/mlproxy/config"
)

// metricValue sums the samples of a metric family whose labels include
// those given.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil: // its count of observations
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := &testStamper{}
	s, err := New(Config{Listen: "127.0.0.1:0", Backend: config.Server{Addr: srv.Addr()}, RegionID: testRegion},
		st, replicated, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	p := &testProxy{Server: s, st: st}
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	// On connect the driver runs SELECT @@max_allowed_packet: one more read.
	mustExec(t, db, "SELECT 1")
	mustExec(t, db, "SELECT 1")
	mustExec(t, db, "INSERT INTO rt (v) VALUES (?)", "metrics-"+time.Now().Format(time.RFC3339Nano))
	mustExec(t, db, "INSERT INTO plain (v) VALUES (NULL)")
	if _, err := db.Exec("SET @_mlr_hlc = 1"); err == nil {
		t.Fatal("refusal expected")
	}
	for name, want := range map[string]float64{
		"mlproxy_proxy_connections":                       1,
		"mlproxy_proxy_connections_total":                 1,
		"mlproxy_proxy_stamped_total":                     1,
		"mlproxy_proxy_statement_cache_hits_total":        1,
		"mlproxy_proxy_statement_cache_misses_total":      5,
		"mlproxy_proxy_backend_errors_total":              0,
		"mlproxy_proxy_refused_total":                     1,
		"mlproxy_proxy_statements_total":                  6,
		"mlproxy_proxy_statements_total/read":             3,
		"mlproxy_proxy_statements_total/write_other":      1,
		"mlproxy_proxy_statements_total/write_replicated": 1,
		// Timed: COM_QUERY and COM_STMT_EXECUTE (not PREPARE).
		"mlproxy_proxy_statement_duration_seconds/read":             3,
		"mlproxy_proxy_statement_duration_seconds/write_replicated": 1,
		"mlproxy_proxy_statement_duration_seconds/write_other":      1,
		"mlproxy_proxy_statement_duration_seconds/refused":          1,
		"mlproxy_proxy_max_connections":                             1000,
	} {
		metric, kind, _ := cut(name)
		labels := map[string]string{}
		if kind != "" {
			labels["kind"] = kind
		}
		if got := metricValue(t, reg, metric, labels); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := metricValue(t, reg, "mlproxy_proxy_refused_total", map[string]string{"reason": reasonStampVariable}); got != 1 {
		t.Errorf("refused_total{reason=stamp_variable} = %v", got)
	}
}

func cut(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
