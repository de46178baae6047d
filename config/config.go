// Package config turns one region's YAML file into a validated, typed
// configuration. Every error names the file, the line and the key.
//
// Each component receives only its own part (Proxy, Tables, Peers, ...);
// nothing here opens a connection or parses SQL.
package config

import "time"

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
}

// Region names this region. ID is the origin stamped into every write
// (_mlr_origin); it must be unique among all regions and fit 1..32767.
type Region struct {
	Name string `yaml:"name"`
	ID   uint16 `yaml:"id"`
}

// Proxy is the client-facing MySQL listener.
type Proxy struct {
	Listen string `yaml:"listen"` // host:port, e.g. "127.0.0.1:6033"
	// TLS, when set, is offered to clients (they may still connect without
	// it unless their MySQL account says REQUIRE SSL).
	TLS *TLSServer `yaml:"tls"`
	// MaxConnections bounds concurrent client connections (0 = 1000).
	MaxConnections int `yaml:"max_connections"`
	// StatementCacheSize is the number of parsed statements kept (0 = 10000).
	StatementCacheSize int `yaml:"statement_cache_size"`
	// ShutdownTimeout bounds connection draining on SIGTERM (0 = 30s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Server is how to reach a MySQL/MariaDB server (the local one or a peer's).
type Server struct {
	Addr     string     `yaml:"addr"` // host:port
	User     string     `yaml:"user"`
	Password string     `yaml:"password"`
	TLS      *TLSClient `yaml:"tls"`
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
	// Line is the line of this entry in the file (for messages).
	Line int `yaml:"-"`
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
	// commit (0 = 64).
	BatchTxns int `yaml:"batch_txns"`
	// RelayBytes bounds the memory of the relay between tailer and applier,
	// and the size of the pieces a large transaction is streamed in
	// (0 = 64 MiB).
	RelayBytes int64 `yaml:"relay_bytes"`
	// Workers applies non-conflicting rows in parallel (0 = 4).
	Workers int `yaml:"workers"`
	// TombstoneGCInterval is how often applied-past tombstones are dropped
	// (0 = 1m).
	TombstoneGCInterval time.Duration `yaml:"tombstone_gc_interval"`
}

// Metrics is the Prometheus endpoint (/metrics) and health check (/healthz).
type Metrics struct {
	Listen string `yaml:"listen"` // empty = off
}

// Log configures logging (JSON lines on stderr).
type Log struct {
	Level string `yaml:"level"` // debug, info (default), warn, error
}
