// Package config turns one region's YAML file into a validated, typed
// configuration. Every error names the file, the line and the key.
//
// Each component receives only its own part (Proxy, Tables, Peers, ...);
// nothing here opens a connection or parses SQL.
package config

import (
	"slices"
	"time"
)

// Config is one region's whole configuration: one file, one region.
type Config struct {
	// Path is the file the configuration was loaded from (for messages).
	Path string `yaml:"-"`

	Region   Region      `yaml:"region"`
	Proxy    Proxy       `yaml:"proxy"`
	Local    Server      `yaml:"local"`
	Tables   []TableRule `yaml:"tables"`
	Peers    []Peer      `yaml:"peers"`
	Topology Topology    `yaml:"topology"`
	Clock    Clock       `yaml:"clock"`
	Apply    Apply       `yaml:"apply"`
	Metrics  Metrics     `yaml:"metrics"`
	Log      Log         `yaml:"log"`
	Tracing  Tracing     `yaml:"tracing"`

	// lines maps each key path written in the file ("peers[1].id") to its
	// line; nil for a Config built in code.
	lines map[string]int
}

// Region names this region. ID is the origin stamped into every write
// (_mlr_origin); it must be unique among all regions and fit 1..32767.
type Region struct {
	Name string `yaml:"name"`
	ID   uint16 `yaml:"id"`
}

// Proxy is the client-facing MySQL listener.
type Proxy struct {
	// Listen is host:port, e.g. "127.0.0.1:6033". It is required and has no
	// default: which interface the proxy is exposed on is the operator's
	// decision. An empty host listens on every interface.
	Listen string `yaml:"listen"`
	// TLS is offered to clients (they may still connect without it unless
	// their MySQL account says REQUIRE SSL). Required unless Insecure.
	TLS *TLSServer `yaml:"tls"`
	// Insecure serves plaintext only, without TLS; it must be said
	// explicitly, and `mlproxy run` warns about it.
	Insecure bool `yaml:"insecure"`
	// MaxConnections bounds concurrent client connections (0 = 1000).
	MaxConnections int `yaml:"max_connections"`
	// StatementCacheSize is the number of parsed statements kept (0 = 10000).
	StatementCacheSize int `yaml:"statement_cache_size"`
	// StatementCacheBytes bounds the statement cache's memory: keys
	// (normalized texts up to 16 KiB each) and classifications
	// (0 = 32 MiB). The least recently used entries go first.
	StatementCacheBytes int64 `yaml:"statement_cache_bytes"`
	// ShutdownTimeout bounds connection draining on SIGTERM (0 = 30s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// AllowDDL lets DDL on replicated tables (ALTER, CREATE, DROP, RENAME,
	// TRUNCATE, indexes) through the proxy. Off by default: such DDL is
	// refused with an error that names `mlproxy schema ddl`, which runs it
	// in every region and prepares the table's stamping. DDL let through
	// does not replicate: run it in every region, then `schema apply`.
	AllowDDL bool `yaml:"allow_ddl"`
	// Forward is how this proxy reaches other regions' proxies to forward
	// writes homed there (home.elsewhere: forward, strong tables with
	// forward: true), under each client's own account.
	Forward Forward `yaml:"forward"`
	// CausalWait bounds how long a read waits for the causal token a
	// session presented (SET @mlr_after) before it gets ERR 1969
	// (0 = 5s).
	CausalWait time.Duration `yaml:"causal_wait"`
}

// Forward configures the sessions a proxy opens at other regions' proxies
// (their addresses: peers[].proxy).
type Forward struct {
	// TLS verifies the other proxies (their certificates, under CA);
	// required unless Insecure.
	TLS *TLSClient `yaml:"tls"`
	// Insecure forwards in plaintext: the client's account's password
	// equivalent then crosses the network readable. Tests only.
	Insecure bool `yaml:"insecure"`
}

// Server is how to reach a MySQL/MariaDB server (the local one or a peer's).
type Server struct {
	Addr     string     `yaml:"addr"` // host:port
	User     string     `yaml:"user"`
	Password string     `yaml:"password"`
	TLS      *TLSClient `yaml:"tls"`
	// Insecure allows a plaintext connection: without it a peer's server
	// needs tls with a client certificate, and the local server needs tls
	// unless it is on a loopback address. `mlproxy run` warns about it.
	Insecure bool `yaml:"insecure"`
}

// TLSServer holds the certificate a listener presents.
type TLSServer struct {
	Cert string `yaml:"cert"` // PEM file
	Key  string `yaml:"key"`  // PEM file
	// CA, when set, verifies client certificates that are presented.
	CA string `yaml:"ca"`
}

// TLSClient configures TLS toward a server.
type TLSClient struct {
	CA                 string `yaml:"ca"`   // PEM file; empty = system roots
	Cert               string `yaml:"cert"` // client certificate, optional
	Key                string `yaml:"key"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// TableRule selects replicated tables and the conflict rule that governs
// them. Table may be "*" for every table of Schema.
type TableRule struct {
	Schema string `yaml:"schema"`
	Table  string `yaml:"table"`
	// Rule is one of: lww (default), first-writer-wins, origin-priority,
	// counter, max, min, manual.
	Rule string `yaml:"rule"`
	// Priority ranks region names for origin-priority, highest first.
	Priority []string `yaml:"priority"`
	// Columns names the numeric columns merged by the counter, max and min
	// rules; other columns follow lww.
	Columns []string `yaml:"columns"`
	// OnConstraint says what the applier does with a remote change that a
	// key the rule cannot place refuses (a secondary unique key, a foreign
	// key): stop (default) holds the table's changes from that peer at
	// that change (the whole link when foreign keys order the table's
	// changes against others') until an operator runs `mlproxy link skip`
	// or `retry`; log records the change whole in the conflict log
	// (outcome rejected) and goes on.
	OnConstraint string `yaml:"on_constraint"`
	// Home, when set, gives each row a home region by key: writes for a key
	// homed in another region are refused (or counted), so the regions
	// never disagree about it (see Home).
	Home *Home `yaml:"home"`
	// Consistency is eventual (default: every region writes, the rule
	// merges) or strong: only Leader writes the table, every other region
	// refuses its writes with an error naming the leader and its proxy, so
	// the table is single-leader (a CHECK holds as at one server) and never
	// merged. Reads stay local; a session that needs the leader's latest
	// presents a causal token (SET @mlr_after).
	Consistency string `yaml:"consistency"`
	// Leader is the region that writes a strong table.
	Leader string `yaml:"leader"`
	// Standby orders the regions that take a strong table over, first
	// one first, when `mlproxy strong move` is not told where to.
	Standby []string `yaml:"standby"`
	// Forward makes the other regions forward a strong table's writes to
	// the leader's proxy (under the client's own account) instead of
	// refusing them.
	Forward bool `yaml:"forward"`
	// Shadow names a candidate rule the applier runs beside Rule on every
	// conflict, logging what it would have decided (see Shadow).
	Shadow *Shadow `yaml:"shadow"`
	// Line is the line of this entry in the file (for messages).
	Line int `yaml:"-"`
}

// Home maps a table's rows to home regions by one column: exactly one of
// List, Hash and Prefixes. A key the mapping does not cover (NULL, outside
// every list entry and prefix) has no home: any region may write it, and
// the table's rule settles conflicts as usual.
type Home struct {
	// Column holds the key (often the primary key's first column, such as
	// user_id). It must be a column of every table the entry names.
	Column string `yaml:"column"`
	// List is explicit: the first entry whose from..to range (integers,
	// inclusive) or values (compared as the column's text) covers the key.
	List []HomeEntry `yaml:"list"`
	// Hash places the keys of these regions on a consistent-hash ring
	// (CRC32 of the key's text): adding a region moves only its share.
	Hash []string `yaml:"hash"`
	// Prefixes maps the key's first characters (such as a geohash's) to a
	// region; the longest matching prefix wins.
	Prefixes []HomeEntry `yaml:"prefixes"`
	// Elsewhere is what happens to a write for a key homed in another
	// region: reject (default: a MySQL error naming the home region and its
	// proxy, from the proxy or, for writes it cannot see, the triggers) or
	// allow (written here and counted as misrouted).
	Elsewhere string `yaml:"elsewhere"`
	// Unknown is what the proxy does with a write whose keys it cannot
	// tell from the statement (a WHERE on another column, INSERT ...
	// SELECT): allow (default; under elsewhere: reject the triggers still
	// refuse each row homed elsewhere) or reject.
	Unknown string `yaml:"unknown"`
	// Leader homes every key in one region: a strong table's (not read
	// from the file; see TableRule.Homing).
	Leader string `yaml:"-"`
}

// HomeEntry maps keys to a region: a range (from, to), values, or a prefix.
type HomeEntry struct {
	Region string   `yaml:"region"`
	From   *int64   `yaml:"from"`
	To     *int64   `yaml:"to"`
	Values []string `yaml:"values"`
	Prefix string   `yaml:"prefix"`
}

// Table consistency (TableRule.Consistency).
const (
	ConsistencyEventual = "eventual"
	ConsistencyStrong   = "strong"
)

// Homed reports whether the table's writes are checked against a home
// mapping (Homing), without building it.
func (t TableRule) Homed() bool { return t.Home != nil || t.Consistency == ConsistencyStrong }

// Homing is the home mapping the table's writes are checked against: its
// Home, or for a strong table every key homed at its Leader; nil for
// neither.
func (t TableRule) Homing() *Home {
	if t.Consistency == ConsistencyStrong {
		h := &Home{Leader: t.Leader, Elsewhere: HomeReject, Unknown: HomeReject}
		if t.Forward {
			h.Elsewhere = HomeForward
		}
		return h
	}
	return t.Home
}

// What happens to a write homed elsewhere, or whose home is unknown.
const (
	HomeReject  = "reject"
	HomeAllow   = "allow"
	HomeForward = "forward"
)

// Shadow is a candidate rule computed beside the live one on every
// conflict: its decision is logged (mlr.conflicts.shadow_outcome), never
// applied. It takes the keys of TableRule that configure a rule.
type Shadow struct {
	Rule     string   `yaml:"rule"`
	Priority []string `yaml:"priority"`
	Columns  []string `yaml:"columns"`
}

// Peer is another region this region pulls changes from.
type Peer struct {
	Name string `yaml:"name"`
	ID   uint16 `yaml:"id"`
	// Server is the peer region's database, read as a replica would.
	Server Server `yaml:"server"`
	// ServerID is the replica server_id this region uses when it connects
	// to the peer's binlog (0 = derived from the two region ids).
	ServerID uint32 `yaml:"server_id"`
	// Proxy is the peer's proxy address (for forwarding, optional).
	Proxy string `yaml:"proxy"`
	Line  int    `yaml:"-"`
}

// Topology says which changes travel over which link.
//
// all-to-all: every region pulls from every peer, taking only that peer's
// own changes. star: the hub pulls from every spoke and forwards; a spoke
// pulls only from the hub. ring: regions ordered by id, each pulls from its
// predecessor (the next lower id, the highest id wrapping around to the
// lowest) and forwards; a ring needs at least three regions. In star and
// ring every region is still listed under peers (names and ids must be
// known everywhere), but a server is only needed for the peers this
// region pulls from (see Sources).
type Topology struct {
	// Mode is all-to-all (default), star or ring.
	Mode string `yaml:"mode"`
	// Hub is the hub region's name in a star.
	Hub string `yaml:"hub"`
}

// Clock configures the hybrid logical clock.
type Clock struct {
	// MaxOffset is how far ahead of local wall time a peer's stamp may be
	// before it is rejected and counted (0 = 500ms).
	MaxOffset time.Duration `yaml:"max_offset"`
}

// Apply tunes the appliers.
type Apply struct {
	// BatchTxns groups up to this many source transactions in one local
	// commit (0 = 512). Batches form only from transactions already waiting,
	// so a region that keeps up still commits each one at once.
	BatchTxns int `yaml:"batch_txns"`
	// RelayBytes bounds the memory of the relay between tailer and applier,
	// and the size of the pieces a large transaction is streamed in
	// (0 = 64 MiB).
	RelayBytes int64 `yaml:"relay_bytes"`
	// Workers is the number of sessions per peer applying batches that
	// share no primary or unique key at once, committing in source order
	// (0 = 1: one session, strictly sequential; measured on a 2-core
	// server, 4 workers brought no catch-up gain and, with local clients
	// writing the same tables, halved their throughput and multiplied
	// their deadlocks; raise it where cores are to spare). More than one needs
	// mlr.markers (`mlproxy schema apply` of this release creates it).
	// Transactions streamed in pieces, batches without row changes and a
	// batch that failed are applied on one session.
	Workers int `yaml:"workers"`
	// TombstoneGCInterval is how often applied-past tombstones are dropped
	// (0 = 1m).
	TombstoneGCInterval time.Duration `yaml:"tombstone_gc_interval"`
	// ConflictRetention is how long the conflict log (mlr.conflicts) keeps
	// conflicts that are settled (decided by their rule, or resolved);
	// pending ones stay until an operator resolves them (0 = 720h).
	ConflictRetention time.Duration `yaml:"conflict_retention"`
	// StuckAfter is how long a link may make no progress at one position,
	// while it has something to apply or keeps failing, before it reports
	// itself stuck (status, metric, an error log line) (0 = 5m).
	StuckAfter time.Duration `yaml:"stuck_after"`
}

// Metrics is the Prometheus endpoint (/metrics) and health check (/healthz).
type Metrics struct {
	Listen string `yaml:"listen"` // empty = off
	// Pprof serves Go's profiler at /debug/pprof/ on the same listener
	// (for performance work; off by default).
	Pprof bool `yaml:"pprof"`
}

// Tracing exports OpenTelemetry spans over OTLP/HTTP: one per proxied
// statement and one per applied transaction, joined across regions by the
// trace context a sampled write carries through the binlog. Off unless
// Endpoint is set.
type Tracing struct {
	// Endpoint is the collector's OTLP/HTTP host:port (4318 by convention)
	// or a URL (http(s)://host:port/v1/traces).
	Endpoint string `yaml:"endpoint"`
	// TLS verifies the collector; Insecure sends plaintext (loopback or a
	// sidecar). One of them is required when Endpoint is set.
	TLS      *TLSClient `yaml:"tls"`
	Insecure bool       `yaml:"insecure"`
	// SampleRatio is the share of statements traced when the client sent
	// no trace context (0..1; default 0.01). A client's sampled traceparent
	// is always followed.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name resource attribute (default mlproxy).
	ServiceName string `yaml:"service_name"`
	// MaxCarriedPerSecond bounds the sampled writes per second whose trace
	// context the proxy carries to the peers (each costs a row in
	// mlr.traces); beyond it their spans are still made, without the
	// peers' apply spans. A client's traceparent decides sampling, so this
	// keeps one client from writing a carrier with every write. 0 = 1000.
	MaxCarriedPerSecond int `yaml:"max_carried_per_second"`
}

// DefaultSampleRatio is tracing.sample_ratio when unset.
const DefaultSampleRatio = 0.01

// Ratio is the configured sample ratio or its default.
func (t Tracing) Ratio() float64 {
	if t.SampleRatio == nil {
		return DefaultSampleRatio
	}
	return *t.SampleRatio
}

// Log configures logging (JSON lines on stderr).
type Log struct {
	Level string `yaml:"level"` // debug, info (default), warn, error
	// Values lets server error messages that quote row values (a
	// duplicate key's text) appear unredacted in logs and /status. Off by
	// default; for debugging only.
	Values bool `yaml:"values"`
	// RepeatWindow: a warning or error line repeated within this window is
	// counted, not written, and the count is written as one line (the last
	// repeat's fields plus "repeated" and "window") when the window ends
	// (0 = 10s). Lines are the same when their level, message and region,
	// peer, schema, table and error fields are (internal/logx).
	RepeatWindow time.Duration `yaml:"repeat_window"`
}

// Conflict rules a TableRule may name.
const (
	RuleLWW               = "lww"
	RuleFirstWriterWins   = "first-writer-wins"
	RuleOriginPriority    = "origin-priority"
	RuleCounter           = "counter"
	RuleMax               = "max"
	RuleMin               = "min"
	RuleManual            = "manual"
	defaultRule           = RuleLWW
	wildcardTable         = "*"
	internalSchema        = "mlr"
	maxRegionID           = 32767
	defaultMaxConns       = 1000
	defaultStmtCacheSize  = 10000
	defaultStmtCacheBytes = 32 << 20
)

// Topology modes.
const (
	TopologyAllToAll = "all-to-all"
	TopologyStar     = "star"
	TopologyRing     = "ring"
)

// Defaults for keys left out of the file (or set to zero).
const (
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultCausalWait          = 5 * time.Second
	DefaultMaxOffset           = 500 * time.Millisecond
	DefaultBatchTxns           = 512
	DefaultRelayBytes          = 64 << 20
	DefaultWorkers             = 1
	DefaultTombstoneGCInterval = time.Minute
	DefaultConflictRetention   = 30 * 24 * time.Hour
	DefaultStuckAfter          = 5 * time.Minute
	DefaultLogLevel            = "info"
	DefaultLogRepeatWindow     = 10 * time.Second
)

// What the applier does when a key refuses a remote change
// (TableRule.OnConstraint).
const (
	OnConstraintStop = "stop"
	OnConstraintLog  = "log"
)

// Rules lists every conflict rule, in the order the documentation gives.
var Rules = []string{RuleLWW, RuleFirstWriterWins, RuleOriginPriority, RuleCounter, RuleMax, RuleMin, RuleManual}

// Default fills every optional key left at its zero value. It never
// touches required keys (region, proxy.listen, local.addr/user, tables) and
// is idempotent; Parse calls it before Validate.
func (c *Config) Default() {
	if c.Proxy.MaxConnections == 0 {
		c.Proxy.MaxConnections = defaultMaxConns
	}
	if c.Proxy.StatementCacheSize == 0 {
		c.Proxy.StatementCacheSize = defaultStmtCacheSize
	}
	if c.Proxy.StatementCacheBytes == 0 {
		c.Proxy.StatementCacheBytes = defaultStmtCacheBytes
	}
	if c.Proxy.ShutdownTimeout == 0 {
		c.Proxy.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Proxy.CausalWait == 0 {
		c.Proxy.CausalWait = DefaultCausalWait
	}
	for i := range c.Tables {
		if c.Tables[i].Rule == "" {
			c.Tables[i].Rule = defaultRule
		}
		if h := c.Tables[i].Home; h != nil {
			if h.Elsewhere == "" {
				h.Elsewhere = HomeReject
			}
			if h.Unknown == "" {
				h.Unknown = HomeAllow
			}
		}
	}
	if c.Topology.Mode == "" {
		c.Topology.Mode = TopologyAllToAll
	}
	if c.Clock.MaxOffset == 0 {
		c.Clock.MaxOffset = DefaultMaxOffset
	}
	if c.Apply.BatchTxns == 0 {
		c.Apply.BatchTxns = DefaultBatchTxns
	}
	if c.Apply.RelayBytes == 0 {
		c.Apply.RelayBytes = DefaultRelayBytes
	}
	if c.Apply.Workers == 0 {
		c.Apply.Workers = DefaultWorkers
	}
	if c.Apply.TombstoneGCInterval == 0 {
		c.Apply.TombstoneGCInterval = DefaultTombstoneGCInterval
	}
	if c.Apply.StuckAfter == 0 {
		c.Apply.StuckAfter = DefaultStuckAfter
	}
	if c.Apply.ConflictRetention == 0 {
		c.Apply.ConflictRetention = DefaultConflictRetention
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.RepeatWindow == 0 {
		c.Log.RepeatWindow = DefaultLogRepeatWindow
	}
}

// TableRule returns the rule for schema.table: an entry naming the table
// exactly beats a "*" entry for its schema. Names compare case-sensitively,
// as MySQL does with lower_case_table_names=0. ok is false when the table
// is not replicated.
func (c *Config) TableRule(schema, table string) (TableRule, bool) {
	var wild *TableRule
	for i := range c.Tables {
		t := &c.Tables[i]
		if t.Schema != schema {
			continue
		}
		if t.Table == table {
			return *t, true
		}
		if t.Table == wildcardTable && wild == nil {
			wild = t
		}
	}
	if wild != nil {
		return *wild, true
	}
	return TableRule{}, false
}

// RegionIDs maps every region's name (this one and its peers) to its id.
func (c *Config) RegionIDs() map[string]uint16 {
	m := make(map[string]uint16, len(c.Peers)+1)
	m[c.Region.Name] = c.Region.ID
	for _, p := range c.Peers {
		m[p.Name] = p.ID
	}
	return m
}

// Forwards reports whether this region passes changes it applied from one
// peer on to others: a star's hub, and every region of a ring.
func (c *Config) Forwards() bool {
	return c.Topology.Mode == TopologyRing || (c.Topology.Mode == TopologyStar && c.Topology.Hub == c.Region.Name)
}

// Sources returns the peers this region pulls changes from under its
// topology (see Topology): every peer in all-to-all and at a star's hub, the
// hub at a star's spoke, the predecessor in a ring. A spoke whose hub is not
// a peer, or a ring without peers, has no sources.
func (c *Config) Sources() []Peer {
	switch c.Topology.Mode {
	case TopologyStar:
		if c.Topology.Hub == c.Region.Name {
			return slices.Clone(c.Peers)
		}
		for _, p := range c.Peers {
			if p.Name == c.Topology.Hub {
				return []Peer{p}
			}
		}
		return nil
	case TopologyRing:
		var pred, highest *Peer
		for i := range c.Peers {
			p := &c.Peers[i]
			if p.ID < c.Region.ID && (pred == nil || p.ID > pred.ID) {
				pred = p
			}
			if highest == nil || p.ID > highest.ID {
				highest = p
			}
		}
		if pred == nil {
			pred = highest
		}
		if pred == nil {
			return nil
		}
		return []Peer{*pred}
	default:
		return slices.Clone(c.Peers)
	}
}
