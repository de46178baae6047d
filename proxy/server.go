package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
)

// Stamper issues fresh stamps; *hlc.Clock implements it. NowContext may
// wait (the clock's reservation is not saved yet) and gives up when ctx,
// the connection's, ends.
type Stamper interface {
	NowContext(ctx context.Context) (hlc.Timestamp, error)
}

var _ Stamper = (*hlc.Clock)(nil)

// Tables says which tables are replicated. The proxy passes names as the
// client wrote them (case preserved, unqualified names qualified with the
// connection's current database); an implementation that wants
// case-insensitive matching folds case itself.
type Tables interface {
	Replicated(schema, table string) bool
}

// SchemaSet, when the Tables also implement it, lists the schemas that
// hold replicated tables; statements whose writes the proxy cannot see
// are stamped only when they may reach one of them.
type SchemaSet interface {
	ReplicatedSchemas() []string
}

// Guard, when the Tables also implement it, names replicated tables that
// must not be written now: their replication metadata (the stamping
// triggers, the _mlr_ columns) was damaged by something the proxy could
// not see (DDL inside a procedure or a prepared statement). Writes to them
// would not replicate correctly, so they are refused until an operator
// repairs the table with `mlproxy schema apply`.
type Guard interface {
	// Blocked is why writes to schema.table are refused ("": they are not).
	Blocked(schema, table string) string
	// AnyBlocked is a reason when any table is blocked: writes the proxy
	// cannot name (CALL, EXECUTE of a text PREPARE) are refused then.
	AnyBlocked() string
}

// Fence, when set in Config, can stop writes to every replicated table at
// once: while Fenced returns a reason, statements that would be stamped get
// ERR 1290 (what a read_only server answers) with that reason, and reads
// and writes to tables that do not replicate go on. The region's clock
// fence (package skew) implements it: a region whose clock runs ahead of
// most of its peers must not stamp writes that would win every conflict.
type Fence interface {
	Fenced() string
}

// Config configures a Server.
type Config struct {
	// Listen is the client-facing host:port.
	Listen string
	// Backend is the region's local server. Only Addr is used for the data
	// path (clients authenticate as themselves); its TLS settings are
	// consulted when BackendTLS is nil (see BackendTLS).
	Backend config.Server
	// ClientTLS, when set, is offered to clients (CLIENT_SSL); nil means
	// clients cannot use TLS.
	ClientTLS *tls.Config
	// BackendTLS, when set, makes every backend connection use TLS
	// (SSLRequest, then the relayed handshake response). When nil, the
	// backend leg is TLS only if the client's leg is and Backend.TLS says
	// insecure_skip_verify (then without certificate checks, for a local
	// server only); otherwise it is plain TCP. Accounts with REQUIRE SSL need
	// a TLS backend leg: set BackendTLS.
	BackendTLS *tls.Config
	// RegionID is the origin stamped into writes (@_mlr_origin);
	// RegionName names the region in spans.
	RegionID   uint16
	RegionName string
	// Tracer, when set, makes a span per statement and carries a sampled
	// write's trace context to the peers (package tracing), at most
	// MaxCarried a second (0 = 1000); nil is off.
	Tracer     trace.Tracer
	MaxCarried int
	// Fence, when set, refuses stamped writes while it says so.
	Fence Fence
	// MaxConnections bounds concurrent clients (0 = 1000); beyond it a
	// client gets ERR 1040 and is closed.
	MaxConnections int
	// CacheSize is the number of classified statements kept (0 = 10000).
	CacheSize int
	// CacheBytes bounds the cache's memory (0 = 32 MiB): what each entry
	// holds (key, classification) is counted, and the least recently used
	// entries are dropped beyond it.
	CacheBytes int64
	// ShutdownTimeout bounds draining in Run (0 = 30s).
	ShutdownTimeout time.Duration
	// AllowDDL lets DDL on replicated tables through; by default it is
	// refused with an error naming `mlproxy schema ddl`.
	AllowDDL bool
	// Causal, when set, answers SELECT mlr_token() and makes a read wait
	// for the token SET @mlr_after gave (causal.go).
	Causal Causal
	// Accounts, when set, lets writes homed elsewhere be forwarded to
	// their home's proxy under the client's own account (forward.go);
	// ForwardTLS, when set, is the TLS of those sessions.
	Accounts   Accounts
	ForwardTLS *tls.Config
}

// Defaults for zero Config fields.
const (
	defaultMaxConnections  = 1000
	defaultCacheSize       = 10000
	defaultCacheBytes      = 32 << 20
	defaultShutdownTimeout = 30 * time.Second
	// handshakeTimeout bounds the connection phase (greeting to auth OK),
	// like the server's connect_timeout.
	handshakeTimeout = 10 * time.Second
	dialTimeout      = 5 * time.Second
)

// ErrClosed is returned by Run when its listener was closed before ctx
// was done (connections are still drained).
var ErrClosed = errors.New("proxy: listener closed before shutdown")

// Server is the client-facing proxy. Create it with New, bind with Listen
// (optional) and serve with Run.
type Server struct {
	cfg     Config
	stamper Stamper
	tables  Tables
	log     *zap.Logger
	m       *metrics
	cls     *classifier
	guard   Guard // nil when Tables does not implement it
	homes   Homes // nil when Tables does not implement it

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{} // live connections, for draining
	draining bool               // set once Run's ctx is done

	carried carryLimit    // trace contexts carried this second
	nconns  atomic.Int64  // live client connections (MaxConnections)
	nextID  atomic.Uint64 // proxy-side connection ids, for logs
}

// New checks cfg and builds a Server. reg may be nil (no metrics exported);
// log may be nil (no logs).
func New(cfg Config, st Stamper, tables Tables, log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	if st == nil || tables == nil {
		return nil, errors.New("proxy: a Stamper and a Tables are required")
	}
	if cfg.Backend.Addr == "" {
		return nil, errors.New("proxy: Backend.Addr is required (the local server's host:port)")
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = defaultMaxConnections
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = defaultCacheSize
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = defaultCacheBytes
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}
	if log == nil {
		log = zap.NewNop()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("proxy: register metrics: %w", err)
	}
	cls, err := newClassifier(cfg.CacheSize, cfg.CacheBytes, m.cacheHits.Inc, m.cacheMisses.Inc)
	if err != nil {
		return nil, fmt.Errorf("proxy: statement cache: %w", err)
	}
	cls.onPanic = m.panics.WithLabelValues("parser").Inc
	m.maxConnections.Set(float64(cfg.MaxConnections))
	if reg != nil {
		_ = reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "mlproxy", Subsystem: "proxy", Name: "statement_cache_bytes",
			Help: "Memory held by the statement cache (keys and classifications), bounded by proxy.statement_cache_bytes."},
			func() float64 { return float64(cls.bytes.Load()) }))
	}
	g, _ := tables.(Guard)
	homes, _ := tables.(Homes)
	return &Server{
		cfg: cfg, stamper: st, tables: tables, log: log, m: m, cls: cls, guard: g, homes: homes,
		conns: map[*conn]struct{}{},
	}, nil
}

// Listen binds the client-facing address, so Addr works before Run.
// Calling it again is a no-op.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy: listen on %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address (nil before Listen).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Run serves until ctx is done. Then it stops accepting and drains: a
// connection waiting for a command outside a transaction is closed at
// once; one running a command or inside a transaction is closed when it is
// next idle outside a transaction, or when ShutdownTimeout has passed,
// whichever comes first. Run returns nil after a clean shutdown, once every
// connection goroutine has ended. Run is called once per Server.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()

	// Connections outlive ctx while draining; force cancels them.
	base, force := context.WithCancel(context.WithoutCancel(ctx))
	defer force()
	var wg sync.WaitGroup
	acceptErr := make(chan error, 1)
	go func() { acceptErr <- s.accept(base, ln, &wg) }()

	var err error
	select {
	case <-ctx.Done():
		_ = ln.Close()
		err = <-acceptErr
	case err = <-acceptErr:
		// The listener was closed under us (Close of the Addr's socket).
		_ = ln.Close()
		if err == nil {
			err = ErrClosed
		}
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("proxy: accept on %s: %w", ln.Addr(), err)
	}
	s.log.Info("proxy draining connections", zap.Duration("timeout", s.cfg.ShutdownTimeout))
	s.mu.Lock()
	s.draining = true
	for c := range s.conns {
		c.drain()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(s.cfg.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("proxy shutdown timeout: closing busy connections")
		force()
		<-done
	}
	s.log.Info("proxy stopped")
	return err
}

// accept runs the accept loop until the listener is closed.
func (s *Server) accept(base context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors, aborted handshakes...: back off and
			// keep serving, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("proxy accept", zap.Error(err), zap.Duration("retry_in", delay))
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-base.Done():
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		s.m.connectionsTotal.Inc()
		if n := s.nconns.Add(1); n > int64(s.cfg.MaxConnections) {
			s.nconns.Add(-1)
			s.m.refused.WithLabelValues("max_connections").Inc()
			s.log.Info("proxy refused connection: too many connections",
				zap.Int("max_connections", s.cfg.MaxConnections))
			wg.Add(1)
			go func() {
				defer wg.Done()
				rejectConn(nc, errPacket(erConCount, "08004", "Too many connections"))
			}()
			continue
		}
		c := s.newConn(base, nc)
		s.mu.Lock()
		if s.draining {
			s.mu.Unlock()
			s.nconns.Add(-1)
			_ = nc.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.m.connections.Inc()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				s.nconns.Add(-1)
				s.m.connections.Dec()
			}()
			c.serve()
		}()
	}
}

// rejectConn sends an ERR as the first packet (instead of a greeting) and
// closes.
func rejectConn(nc net.Conn, pkt []byte) {
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	w := newWire(nc)
	if _, err := w.writePacket(pkt, 0); err == nil {
		_ = w.w.Flush()
	}
	_ = nc.Close()
}
