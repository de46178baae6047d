package config

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Validate checks the meaning of the configuration (required keys, unique
// region ids and peer names, known rules and regions, topology, addresses,
// TLS files, ranges) and returns every problem at once as Errors, each
// naming the file, line and key. Call Default first: Validate treats zero
// optional values as mistakes.
func (c *Config) Validate() error {
	return c.validate().err()
}

// namePattern is what a region name may look like: it appears in metrics
// labels, log fields and mlr.checkpoints.peer_name (VARCHAR(64)).
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

type checker struct {
	c    *Config
	errs Errors
}

func (k *checker) bad(key, format string, args ...any) {
	k.errs = append(k.errs, k.c.errorAt(key, format, args...))
}

// badNear reports a problem with key; when key is not written in the file,
// the line is that of near (the key that made key necessary, such as a
// rule that needs columns) rather than of key's parent.
func (k *checker) badNear(key, near, format string, args ...any) {
	e := k.c.errorAt(key, format, args...)
	if !k.c.has(key) && k.c.has(near) {
		e.Line = k.c.line(near)
	}
	k.errs = append(k.errs, e)
}

func (c *Config) validate() Errors {
	k := &checker{c: c}
	k.region()
	k.proxy()
	k.server("local", "", c.Local)
	k.peers()
	k.tables()
	k.topology()
	k.tuning()
	k.tracing()
	return k.errs
}

func (k *checker) region() {
	r := k.c.Region
	switch {
	case r.Name == "":
		k.bad("region.name", "required: this region's name, e.g. \"eu\"")
	case !namePattern.MatchString(r.Name):
		k.bad("region.name", "invalid name %q: use letters, digits, '_', '.', '-' (at most 64)", r.Name)
	}
	k.regionID("region.id", r.ID)
}

// regionID checks id is in 1..32767, telling a missing key from a zero.
func (k *checker) regionID(key string, id uint16) {
	switch {
	case id == 0 && !k.c.has(key) && k.c.lines != nil:
		k.bad(key, "required: a region id in 1..%d, unique among all regions", maxRegionID)
	case id == 0 || id > maxRegionID:
		k.bad(key, "region id %d out of range 1..%d", id, maxRegionID)
	}
}

func (k *checker) proxy() {
	p := k.c.Proxy
	if p.Listen == "" {
		k.bad("proxy.listen", "required: the address clients connect to, e.g. \"127.0.0.1:6033\"")
	} else {
		k.addr("proxy.listen", p.Listen, true)
	}
	switch {
	case p.TLS == nil && !p.Insecure:
		k.bad("proxy.tls", "required: the certificate offered to clients (cert, key); set proxy.insecure: true to serve plaintext only")
	case p.TLS != nil && p.Insecure:
		k.bad("proxy.insecure", "contradicts proxy.tls: remove one of them")
	}
	if t := p.TLS; t != nil {
		if t.Cert == "" {
			k.bad("proxy.tls.cert", "required when proxy.tls is set: the server certificate (PEM file)")
		}
		if t.Key == "" {
			k.bad("proxy.tls.key", "required when proxy.tls is set: the certificate's private key (PEM file)")
		}
		k.file("proxy.tls.cert", t.Cert)
		k.file("proxy.tls.key", t.Key)
		k.file("proxy.tls.ca", t.CA)
		if t.Cert != "" && t.Key != "" && allExist(t.Cert, t.Key, t.CA) {
			if _, err := t.Config(); err != nil {
				k.bad("proxy.tls", "%v", err)
			}
		}
	}
	if p.MaxConnections < 0 {
		k.bad("proxy.max_connections", "must be positive, got %d", p.MaxConnections)
	}
	if p.StatementCacheSize < 0 {
		k.bad("proxy.statement_cache_size", "must be positive, got %d", p.StatementCacheSize)
	}
	if p.StatementCacheBytes < 0 {
		k.bad("proxy.statement_cache_bytes", "must be positive, got %d", p.StatementCacheBytes)
	}
	if p.ShutdownTimeout < 0 {
		k.bad("proxy.shutdown_timeout", "must be positive, got %s", p.ShutdownTimeout)
	}
}

// server checks a database connection under key ("local",
// "peers[0].server"); peer names the peer region ("" for the local server).
// A link to a peer is TLS with a client certificate (the peer's replication
// account requires it), the local server TLS unless it is on loopback;
// anything less needs insecure: true.
func (k *checker) server(key, peer string, s Server) {
	if s.Addr == "" {
		k.bad(key+".addr", "required: the MySQL/MariaDB server as host:port")
	} else {
		k.addr(key+".addr", s.Addr, false)
	}
	if s.User == "" {
		k.bad(key+".user", "required: the MySQL user mlproxy connects as")
	}
	if t := s.TLS; t != nil {
		k.file(key+".tls.ca", t.CA)
		k.file(key+".tls.cert", t.Cert)
		k.file(key+".tls.key", t.Key)
		if (t.Cert == "") != (t.Key == "") {
			k.bad(key+".tls", "cert and key go together: set both or neither")
		} else if allExist(t.CA, t.Cert, t.Key) {
			if _, err := s.TLSConfig(); err != nil {
				k.bad(key+".tls", "%v", err)
			}
		}
	}
	if h, _, err := net.SplitHostPort(s.Addr); err != nil || h == "" || s.User == "" {
		return // the address or user is wrong already; TLS comes after
	}
	switch {
	case s.Insecure && s.TLS != nil:
		k.bad(key+".insecure", "contradicts %s.tls: remove one of them", key)
	case s.Insecure:
	case peer != "" && s.TLS == nil:
		k.bad(key+".tls", "required: the link to peer %s is encrypted and authenticated with a client certificate (ca, cert, key); set %s.insecure: true to allow plaintext", peer, key)
	case peer != "" && s.TLS.Cert == "":
		k.bad(key+".tls.cert", "required: the client certificate peer %s's replication account requires (REQUIRE SUBJECT); set %s.insecure: true to go without", peer, key)
	case peer == "" && s.TLS == nil && s.Addr != "" && !loopback(s.Addr):
		k.bad(key+".tls", "required: %s is not a loopback address, so the connection is encrypted (ca; cert and key if the account requires one); set %s.insecure: true to allow plaintext", s.Addr, key)
	}
}

// allExist reports whether every non-empty path names an existing file
// (missing ones are reported by file).
func allExist(paths ...string) bool {
	for _, p := range paths {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// loopback reports whether addr's host is a loopback address or localhost.
func loopback(addr string) bool {
	h := hostOf(addr)
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Plaintext lists, by key, the links this configuration leaves
// unencrypted or unverified (insecure: true, insecure_skip_verify, a local
// server on loopback without tls), for `mlproxy run` to warn about.
func (c *Config) Plaintext() []string {
	var out []string
	if c.Proxy.TLS == nil {
		out = append(out, "proxy: clients are served plaintext (proxy.insecure)")
	}
	check := func(key string, s Server) {
		switch {
		case s.TLS == nil && s.Insecure:
			out = append(out, fmt.Sprintf("%s: plaintext to %s (insecure: true)", key, s.Addr))
		case s.TLS != nil && s.TLS.InsecureSkipVerify:
			out = append(out, fmt.Sprintf("%s: the certificate of %s is not verified (insecure_skip_verify)", key, s.Addr))
		}
	}
	check("local", c.Local)
	for _, p := range c.Sources() {
		check(fmt.Sprintf("peer %s", p.Name), p.Server)
	}
	return out
}

// addr checks host:port. A listen address may leave the host empty (every
// interface); a dial address may not.
func (k *checker) addr(key, a string, listen bool) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		k.bad(key, "invalid address %q: want host:port", a)
		return
	}
	if host == "" && !listen {
		k.bad(key, "invalid address %q: host is missing", a)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		k.bad(key, "invalid address %q: port must be a number in 1..65535", a)
	}
}

// file checks that a configured file exists and is a regular file; an
// empty path is "not set" and fine.
func (k *checker) file(key, path string) {
	if path == "" {
		return
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		k.bad(key, "cannot use file %s: %v", path, unwrapPathError(err))
	case !st.Mode().IsRegular():
		k.bad(key, "%s is not a regular file", path)
	}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func (k *checker) peers() {
	c := k.c
	idUser := map[uint16]string{}
	if c.Region.ID != 0 {
		idUser[c.Region.ID] = "region.id"
	}
	nameUser := map[string]string{}
	if c.Region.Name != "" {
		nameUser[c.Region.Name] = "region.name"
	}
	sources := map[string]bool{}
	for _, p := range c.Sources() {
		sources[p.Name] = true
	}
	for i, p := range c.Peers {
		key := fmt.Sprintf("peers[%d]", i)
		switch {
		case p.Name == "":
			k.bad(key+".name", "required: the peer region's name")
		case !namePattern.MatchString(p.Name):
			k.bad(key+".name", "invalid name %q: use letters, digits, '_', '.', '-' (at most 64)", p.Name)
		case nameUser[p.Name] == "region.name":
			k.bad(key+".name", "%q is this region's own name (region.name): list only other regions as peers", p.Name)
		case nameUser[p.Name] != "":
			k.bad(key+".name", "duplicate peer name %q (also used by %s)", p.Name, nameUser[p.Name])
		default:
			nameUser[p.Name] = key
		}
		before := len(k.errs)
		k.regionID(key+".id", p.ID)
		if len(k.errs) == before {
			if other, dup := idUser[p.ID]; dup {
				k.bad(key+".id", "duplicate region id %d (also used by %s)", p.ID, other)
			} else {
				idUser[p.ID] = key
			}
		}
		if sources[p.Name] || k.c.has(key+".server") {
			k.server(key+".server", p.Name, p.Server)
		}
		if p.Proxy != "" {
			k.addr(key+".proxy", p.Proxy, false)
		}
	}
}

func (k *checker) tables() {
	c := k.c
	if len(c.Tables) == 0 {
		if !c.has("tables") {
			k.bad("tables", "required: at least one entry naming the replicated tables and their conflict rule (or `tables: []` for a pure proxy that replicates nothing)")
		}
		return
	}
	regions := c.RegionIDs()
	seen := map[string]string{}
	for i, t := range c.Tables {
		key := fmt.Sprintf("tables[%d]", i)
		switch {
		case t.Schema == "":
			k.bad(key+".schema", "required: the database (schema) name")
		case t.Schema == wildcardTable:
			k.bad(key+".schema", "wildcard not allowed: name the schema (table may be \"*\")")
		case strings.EqualFold(t.Schema, internalSchema):
			k.bad(key+".schema", "%q is mlproxy's internal schema and is never replicated as data", t.Schema)
		}
		if t.Table == "" {
			k.bad(key+".table", "required: a table name, or \"*\" for every table of the schema")
		}
		if t.Schema != "" && t.Table != "" {
			name := t.Schema + "." + t.Table
			if other, dup := seen[name]; dup {
				k.bad(key, "duplicate entry for %s (also %s)", name, other)
			} else {
				seen[name] = key
			}
		}
		k.rule(key, "", t.Rule, t.Priority, t.Columns, regions)
		if t.OnConstraint != "" && t.OnConstraint != OnConstraintStop && t.OnConstraint != OnConstraintLog {
			k.bad(key+".on_constraint", "unknown value %q (known: stop, log)", t.OnConstraint)
		}
		if sh := t.Shadow; sh != nil {
			if sh.Rule == "" {
				k.bad(key+".shadow.rule", "required: the candidate rule computed beside %s", t.Rule)
			} else {
				k.rule(key, ".shadow", sh.Rule, sh.Priority, sh.Columns, regions)
			}
			if sh.Rule == RuleCounter && t.Rule != RuleCounter {
				// A counter merges per-region contributions that only a
				// counter table's versions record: without them it would
				// count each side's whole value.
				k.bad(key+".shadow.rule", "counter can shadow only a counter table (its merge needs the per-region contributions only counter tables record); "+
					"to see what counter would do, run it live on a copy of the table, or shadow max to see which updates lww loses")
			}
		}
		if t.Home != nil {
			k.home(key+".home", t.Home, regions)
		}
		switch t.Consistency {
		case "", ConsistencyEventual:
			if t.Leader != "" {
				k.bad(key+".leader", "only used by consistency: strong")
			}
			if t.Forward {
				k.bad(key+".forward", "only used by consistency: strong (a home mapping says elsewhere: forward)")
			}
			if len(t.Standby) > 0 {
				k.bad(key+".standby", "only used by consistency: strong")
			}
		case ConsistencyStrong:
			if t.Forward {
				k.forwarding(key + ".forward")
			}
			if t.Leader == "" {
				k.badNear(key+".leader", key+".consistency", "required by consistency: strong: the region that writes the table")
			} else if _, ok := regions[t.Leader]; !ok {
				k.bad(key+".leader", "unknown region %q (known: %s)", t.Leader, strings.Join(sortedNames(regions), ", "))
			}
			if t.Home != nil {
				k.bad(key+".home", "a strong table has one home, its leader: drop home or consistency: strong")
			}
			seen := map[string]int{}
			for j, name := range t.Standby {
				sk := fmt.Sprintf("%s.standby[%d]", key, j)
				switch _, known := regions[name]; {
				case !known:
					k.bad(sk, "unknown region %q (known: %s)", name, strings.Join(sortedNames(regions), ", "))
				case name == t.Leader:
					k.bad(sk, "%q is the leader", name)
				default:
					if prev, dup := seen[name]; dup {
						k.bad(sk, "region %q listed twice (also standby[%d])", name, prev)
					}
				}
				seen[name] = j
			}
		default:
			k.bad(key+".consistency", "unknown value %q (known: eventual, strong)", t.Consistency)
		}
	}
}

// forwarding checks what forwarding (asked for at key) needs: TLS to the
// other proxies (or an explicit insecure) and every peer's proxy address.
func (k *checker) forwarding(key string) {
	f := k.c.Proxy.Forward
	if f.TLS == nil && !f.Insecure {
		k.badNear("proxy.forward.tls", key, "required by %s: forwarded sessions carry the client's account to the other proxies (or proxy.forward.insecure: true)", key)
	}
	for i, p := range k.c.Peers {
		if p.Proxy == "" {
			k.badNear(fmt.Sprintf("peers[%d].proxy", i), key, "required by %s: the address writes homed in region %s are forwarded to", key, p.Name)
		}
	}
}

// rule checks a rule and its keys (priority, columns) under key+sub.
func (k *checker) rule(key, sub, rule string, priority, columns []string, regions map[string]uint16) {
	rk := key + sub
	merge := rule == RuleCounter || rule == RuleMax || rule == RuleMin
	switch {
	case !slices.Contains(Rules, rule):
		k.bad(rk+".rule", "unknown rule %q (known: %s)", rule, strings.Join(Rules, ", "))
	case merge && len(columns) == 0:
		k.badNear(rk+".columns", rk+".rule", "required by rule %s: the numeric columns it merges", rule)
	case rule == RuleOriginPriority:
		k.priority(rk, priority, regions)
	}
	if !merge && len(columns) > 0 {
		k.bad(rk+".columns", "only used by rules counter, max and min, not %s", rule)
	}
	if rule != RuleOriginPriority && len(priority) > 0 {
		k.bad(rk+".priority", "only used by rule origin-priority, not %s", rule)
	}
	cols := map[string]int{}
	for j, col := range columns {
		ck := fmt.Sprintf("%s.columns[%d]", rk, j)
		if col == "" {
			k.bad(ck, "empty column name")
		} else if prev, dup := cols[col]; dup {
			k.bad(ck, "duplicate column %q (also columns[%d])", col, prev)
		} else {
			cols[col] = j
		}
	}
}

// home checks a home-region mapping: one kind of mapping, known regions,
// ranges that make sense, known policies.
func (k *checker) home(key string, h *Home, regions map[string]uint16) {
	if h.Column == "" {
		k.bad(key+".column", "required: the column that holds each row's key")
	}
	kinds := 0
	for _, n := range []int{len(h.List), len(h.Hash), len(h.Prefixes)} {
		if n > 0 {
			kinds++
		}
	}
	if kinds != 1 {
		k.bad(key, "needs exactly one of list, hash and prefixes (the mapping from keys to regions)")
	}
	region := func(ek, name string) {
		if _, ok := regions[name]; !ok {
			k.bad(ek, "unknown region %q (known: %s)", name, strings.Join(sortedNames(regions), ", "))
		}
	}
	for j, e := range h.List {
		ek := fmt.Sprintf("%s.list[%d]", key, j)
		region(ek+".region", e.Region)
		ranged := e.From != nil || e.To != nil
		switch {
		case e.Prefix != "":
			k.bad(ek+".prefix", "prefix belongs under prefixes, not list")
		case ranged && len(e.Values) > 0:
			k.bad(ek, "give either from/to or values, not both")
		case !ranged && len(e.Values) == 0:
			k.bad(ek, "needs from and to (an integer range) or values")
		case ranged && (e.From == nil || e.To == nil):
			k.bad(ek, "a range needs both from and to (inclusive)")
		case ranged && *e.From > *e.To:
			k.bad(ek+".to", "range ends (%d) before it starts (%d)", *e.To, *e.From)
		}
	}
	seen := map[string]int{}
	for j, name := range h.Hash {
		hk := fmt.Sprintf("%s.hash[%d]", key, j)
		region(hk, name)
		if prev, dup := seen[name]; dup {
			k.bad(hk, "region %q listed twice (also hash[%d])", name, prev)
		}
		seen[name] = j
	}
	prefixes := map[string]int{}
	for j, e := range h.Prefixes {
		ek := fmt.Sprintf("%s.prefixes[%d]", key, j)
		region(ek+".region", e.Region)
		switch {
		case e.Prefix == "":
			k.bad(ek+".prefix", "required: the key's first characters")
		case e.From != nil || e.To != nil || len(e.Values) > 0:
			k.bad(ek, "a prefix entry takes only prefix and region")
		}
		if prev, dup := prefixes[e.Prefix]; dup && e.Prefix != "" {
			k.bad(ek+".prefix", "prefix %q listed twice (also prefixes[%d])", e.Prefix, prev)
		}
		prefixes[e.Prefix] = j
	}
	switch h.Elsewhere {
	case "", HomeReject, HomeAllow:
	case HomeForward:
		k.forwarding(key + ".elsewhere")
	default:
		k.bad(key+".elsewhere", "unknown value %q (known: reject, allow, forward)", h.Elsewhere)
	}
	switch h.Unknown {
	case "", HomeAllow, HomeReject:
	case HomeForward:
		k.bad(key+".unknown", "a write whose keys the statement does not show cannot be forwarded (its home is unknown): use allow or reject")
	default:
		k.bad(key+".unknown", "unknown value %q (known: allow, reject)", h.Unknown)
	}
}

// priority checks an origin-priority ranking: it must rank every region
// exactly once, so every region resolves every conflict the same way.
func (k *checker) priority(key string, prio []string, regions map[string]uint16) {
	if len(prio) == 0 {
		k.badNear(key+".priority", key+".rule", "required by rule origin-priority: region names, highest priority first")
		return
	}
	seen := map[string]int{}
	for j, name := range prio {
		pk := fmt.Sprintf("%s.priority[%d]", key, j)
		if _, ok := regions[name]; !ok {
			k.bad(pk, "unknown region %q (known: %s)", name, strings.Join(sortedNames(regions), ", "))
		} else if prev, dup := seen[name]; dup {
			k.bad(pk, "region %q ranked twice (also priority[%d])", name, prev)
		} else {
			seen[name] = j
		}
	}
	var missing []string
	for _, name := range sortedNames(regions) {
		if _, ok := seen[name]; !ok && name != "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		k.bad(key+".priority", "must rank every region; missing %s", strings.Join(missing, ", "))
	}
}

func sortedNames(m map[string]uint16) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (k *checker) topology() {
	t := k.c.Topology
	switch t.Mode {
	case TopologyAllToAll, TopologyRing:
		if t.Hub != "" {
			k.bad("topology.hub", "only used by mode star, not %s", t.Mode)
		}
		if n := len(k.c.Peers) + 1; t.Mode == TopologyRing && n < 3 {
			k.bad("topology.mode", "a ring needs at least 3 regions, found %d: use all-to-all", n)
		}
	case TopologyStar:
		if t.Hub == "" {
			k.badNear("topology.hub", "topology.mode", "required by mode star: the hub region's name")
		} else if _, ok := k.c.RegionIDs()[t.Hub]; !ok {
			k.bad("topology.hub", "unknown region %q (known: %s)", t.Hub, strings.Join(sortedNames(k.c.RegionIDs()), ", "))
		}
	default:
		k.bad("topology.mode", "unknown mode %q (known: all-to-all, star, ring)", t.Mode)
	}
}

func (k *checker) tuning() {
	c := k.c
	if c.Clock.MaxOffset <= 0 {
		k.bad("clock.max_offset", "must be positive, got %s", c.Clock.MaxOffset)
	}
	if c.Apply.BatchTxns <= 0 {
		k.bad("apply.batch_txns", "must be positive, got %d", c.Apply.BatchTxns)
	}
	if c.Apply.RelayBytes <= 0 {
		k.bad("apply.relay_bytes", "must be positive, got %d", c.Apply.RelayBytes)
	}
	if c.Apply.Workers <= 0 {
		k.bad("apply.workers", "must be positive, got %d", c.Apply.Workers)
	}
	if c.Apply.TombstoneGCInterval <= 0 {
		k.bad("apply.tombstone_gc_interval", "must be positive, got %s", c.Apply.TombstoneGCInterval)
	}
	if c.Apply.StuckAfter < time.Second {
		k.bad("apply.stuck_after", "must be at least 1s, got %s", c.Apply.StuckAfter)
	}
	if c.Apply.ConflictRetention < time.Minute {
		k.bad("apply.conflict_retention", "must be at least 1m, got %s", c.Apply.ConflictRetention)
	}
	if c.Metrics.Listen != "" {
		k.addr("metrics.listen", c.Metrics.Listen, true)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		k.bad("log.level", "unknown level %q (known: debug, info, warn, error)", c.Log.Level)
	}
	if c.Log.RepeatWindow < time.Second {
		k.bad("log.repeat_window", "must be at least 1s, got %s", c.Log.RepeatWindow)
	}
}

func (k *checker) tracing() {
	t := k.c.Tracing
	if t.Endpoint == "" {
		if t.SampleRatio != nil || t.TLS != nil || t.Insecure {
			k.bad("tracing", "tracing options are set but tracing.endpoint is empty: name the OTLP/HTTP collector (host:4318) or remove the section")
		}
		return
	}
	if t.TLS == nil && !t.Insecure {
		k.bad("tracing.endpoint", "tracing.endpoint %q needs tracing.tls (to verify the collector) or tracing.insecure: true (plaintext, for a collector on loopback)", t.Endpoint)
	}
	if t.MaxCarriedPerSecond < 0 {
		k.bad("tracing.max_carried_per_second", "tracing.max_carried_per_second %d is negative (0 = 1000)", t.MaxCarriedPerSecond)
	}
	if r := t.Ratio(); r < 0 || r > 1 || r != r {
		k.bad("tracing.sample_ratio", "tracing.sample_ratio %v is not between 0 and 1", r)
	}
}
