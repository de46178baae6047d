package chaos

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"time"
)

// Net is the fault layer: one TCP proxy per link (a region's tailer to a
// peer's server, a region's mlproxy to its own server), all on loopback,
// in this process, with toxics added and removed by name.
//
// It follows toxiproxy's model and names (a toxic has a type, a stream
// and attributes; upstream is towards the server), but is our own small
// proxy: toxiproxy v2.12.0 used as a library panics in
// (*ToxicLink).AddToxic ("index out of range") when a toxic is added to a
// link from which a timeout toxic was removed while connections were open:
// its RemoveToxic returns early once the toxic's Cleanup has closed the
// stub, leaving the link's stub list one longer than the toxic chain, and
// the next AddToxic in that direction indexes the chain past its end. The
// panic is on one of toxiproxy's goroutines, so it takes the test process
// down with every server's directory left behind; schedules hit it within
// a minute.
type Net struct {
	mu    sync.Mutex
	links map[string]*link
}

// NewNet starts an empty fault layer.
func NewNet() *Net { return &Net{links: map[string]*link{}} }

// LinkName names the link from region from to the server of region to.
func LinkName(from, to string) string { return from + "->" + to }

// Toxic is one fault on a link.
type Toxic struct {
	Name string // unique on the link
	// Type is latency (attrs latency, jitter: ms), bandwidth (rate: KB/s),
	// reset_peer (timeout: ms, then the connections are reset), timeout
	// (data dropped; timeout: ms, then closed, 0 = never) or hold (data
	// held, not dropped, until the toxic is removed: a partition).
	Type   string
	Stream string // upstream (client to server) or downstream
	Attrs  map[string]int64
}

// link is one proxy and its toxics.
type link struct {
	name, upstream string
	ln             net.Listener

	mu      sync.Mutex
	toxics  map[string]Toxic
	changed chan struct{} // closed and replaced whenever toxics change
	conns   map[*conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// conn is one proxied connection.
type conn struct {
	client, server net.Conn
	once           sync.Once
}

func (c *conn) close(reset bool) {
	c.once.Do(func() {
		for _, nc := range []net.Conn{c.client, c.server} {
			if tc, ok := nc.(*net.TCPConn); ok && reset {
				_ = tc.SetLinger(0) // RST instead of FIN
			}
			_ = nc.Close()
		}
	})
}

// Link starts a proxy on a free loopback port that forwards to upstream
// and returns its address.
func (n *Net) Link(name, upstream string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("fault proxy %s: %w", name, err)
	}
	l := &link{name: name, upstream: upstream, ln: ln, toxics: map[string]Toxic{},
		changed: make(chan struct{}), conns: map[*conn]struct{}{}}
	n.mu.Lock()
	n.links[name] = l
	n.mu.Unlock()
	l.wg.Add(1)
	go l.accept()
	return ln.Addr().String(), nil
}

// Links returns the link names, sorted.
func (n *Net) Links() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for k := range n.links {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Add adds t to the link named name.
func (n *Net) Add(name string, t Toxic) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	switch t.Type {
	case "latency", "bandwidth", "reset_peer", "timeout", "hold":
	default:
		return fmt.Errorf("fault proxy %s: unknown toxic type %q", name, t.Type)
	}
	if t.Stream != "upstream" && t.Stream != "downstream" {
		return fmt.Errorf("fault proxy %s: stream %q: want upstream or downstream", name, t.Stream)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.toxics[t.Name]; ok {
		return fmt.Errorf("fault proxy %s: toxic %s already exists", name, t.Name)
	}
	l.toxics[t.Name] = t
	l.changedLocked()
	for c := range l.conns {
		l.armLocked(c, t)
	}
	return nil
}

// Remove removes the toxic named toxic from the link named name.
func (n *Net) Remove(name, toxic string) error {
	l, err := n.link(name)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.toxics[toxic]; !ok {
		return fmt.Errorf("fault proxy %s: no toxic %s", name, toxic)
	}
	delete(l.toxics, toxic)
	l.changedLocked()
	return nil
}

// Heal removes every toxic from every link.
func (n *Net) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.links {
		l.mu.Lock()
		clear(l.toxics)
		l.changedLocked()
		l.mu.Unlock()
	}
}

// Close stops every link and closes its connections, and waits for their
// goroutines.
func (n *Net) Close() {
	n.mu.Lock()
	links := n.links
	n.links = map[string]*link{}
	n.mu.Unlock()
	for _, l := range links {
		l.mu.Lock()
		l.closed = true
		clear(l.toxics)
		l.changedLocked()
		for c := range l.conns {
			c.close(false)
		}
		l.mu.Unlock()
		_ = l.ln.Close()
		l.wg.Wait()
	}
}

func (n *Net) link(name string) (*link, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, ok := n.links[name]
	if !ok {
		return nil, fmt.Errorf("no fault proxy %s", name)
	}
	return l, nil
}

func (l *link) changedLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// armLocked starts t's timer on c if t closes connections: reset_peer
// resets and timeout closes them once the toxic has been in place for its
// timeout (if it still is).
func (l *link) armLocked(c *conn, t Toxic) {
	if t.Type != "reset_peer" && (t.Type != "timeout" || t.Attrs["timeout"] == 0) {
		return
	}
	time.AfterFunc(time.Duration(t.Attrs["timeout"])*time.Millisecond, func() {
		l.mu.Lock()
		_, still := l.toxics[t.Name]
		l.mu.Unlock()
		if still {
			c.close(t.Type == "reset_peer")
		}
	})
}

func (l *link) accept() {
	defer l.wg.Done()
	for {
		client, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.wg.Add(1)
		go l.serve(client)
	}
}

// serve connects client to the upstream server and pumps both ways.
func (l *link) serve(client net.Conn) {
	defer l.wg.Done()
	server, err := net.DialTimeout("tcp", l.upstream, 5*time.Second)
	if err != nil {
		_ = client.Close() // the server is down: so is the link
		return
	}
	c := &conn{client: client, server: server}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		c.close(false)
		return
	}
	l.conns[c] = struct{}{}
	for _, t := range l.toxics {
		l.armLocked(c, t)
	}
	l.mu.Unlock()
	l.wg.Add(2)
	go l.pump(c, client, server, "upstream")
	go l.pump(c, server, client, "downstream")
}

// effect is what the toxics in place do to one stream.
type effect struct {
	latency, jitter time.Duration
	rate            int64 // bytes per second; 0 = unlimited
	hold, drop      bool
	changed         <-chan struct{}
}

func (l *link) effect(stream string) effect {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := effect{changed: l.changed}
	for _, t := range l.toxics {
		if t.Stream != stream {
			continue
		}
		switch t.Type {
		case "latency":
			e.latency += time.Duration(t.Attrs["latency"]) * time.Millisecond
			e.jitter += time.Duration(t.Attrs["jitter"]) * time.Millisecond
		case "bandwidth":
			if r := t.Attrs["rate"] * 1024; e.rate == 0 || r < e.rate {
				e.rate = max(r, 1)
			}
		case "hold":
			e.hold = true
		case "timeout":
			e.drop = true
		}
	}
	return e
}

// pump copies one direction of c through the toxics of that stream, one
// read at a time: latency delays each chunk from when it was read,
// bandwidth paces writes, hold stops reading and writing (TCP pushes back
// on the sender, nothing is lost), timeout reads and discards.
func (l *link) pump(c *conn, src, dst net.Conn, stream string) {
	defer l.wg.Done()
	defer func() {
		c.close(false)
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		nr, err := src.Read(buf)
		read := time.Now()
		if nr > 0 && !l.deliver(dst, buf[:nr], read, stream) {
			return
		}
		if err != nil {
			return // EOF or closed: the whole connection ends (MySQL has no half-close)
		}
	}
}

// deliver writes chunk to dst as the stream's toxics say; false when the
// connection is finished.
func (l *link) deliver(dst net.Conn, chunk []byte, read time.Time, stream string) bool {
	for {
		e := l.effect(stream)
		if e.drop {
			return true
		}
		if e.hold {
			<-e.changed
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed {
				return false
			}
			continue
		}
		if e.latency > 0 || e.jitter > 0 {
			d := e.latency
			if e.jitter > 0 {
				d += time.Duration(rand.Int64N(int64(2*e.jitter))) - e.jitter
			}
			if wait := time.Until(read.Add(d)); wait > 0 {
				select {
				case <-time.After(wait):
				case <-e.changed:
					continue // toxics changed while waiting: look again
				}
			}
		}
		for len(chunk) > 0 {
			n := len(chunk)
			if e.rate > 0 {
				n = min(n, int(max(e.rate/10, 1))) // 100ms worth at a time
			}
			if _, err := dst.Write(chunk[:n]); err != nil {
				return false
			}
			chunk = chunk[n:]
			if e.rate > 0 {
				time.Sleep(time.Duration(int64(n) * int64(time.Second) / e.rate))
				if len(chunk) > 0 {
					e = l.effect(stream) // re-read: bandwidth may be lifted
					if e.hold || e.drop {
						return l.deliver(dst, chunk, read, stream)
					}
				}
			}
		}
		return true
	}
}
