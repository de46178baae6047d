package chaos

import (
	"io"
	"net"
	"testing"
	"time"
)

// echoLink starts an echo server behind a fault proxy link "a->b" and
// returns a client connection through it.
func echoLink(t *testing.T) (*Net, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	n := NewNet()
	t.Cleanup(n.Close)
	addr, err := n.Link("a->b", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return n, c
}

// roundTrip writes msg and reads it back within d; it reports the time
// taken, or an error.
func roundTrip(c net.Conn, msg string, d time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(d))
	if _, err := c.Write([]byte(msg)); err != nil {
		return 0, err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return 0, err
	}
	if string(buf) != msg {
		return 0, io.ErrUnexpectedEOF
	}
	return time.Since(start), nil
}

func TestNetHoldDeliversAfterRemoval(t *testing.T) {
	n, c := echoLink(t)
	if _, err := roundTrip(c, "before", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n.Add("a->b", Toxic{Name: "p", Type: "hold", Stream: "downstream"}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, "held", 300*time.Millisecond); err == nil {
		t.Fatal("data crossed a held stream")
	}
	if err := n.Remove("a->b", "p"); err != nil {
		t.Fatal(err)
	}
	// The echo of "held" was kept, not dropped: it arrives first.
	buf := make([]byte, 4)
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after the hold: %q, %v; want the held bytes", buf, err)
	}
	if _, err := roundTrip(c, "after", time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestNetLatencyAndReset(t *testing.T) {
	n, c := echoLink(t)
	if err := n.Add("a->b", Toxic{Name: "l", Type: "latency", Stream: "upstream", Attrs: map[string]int64{"latency": 200}}); err != nil {
		t.Fatal(err)
	}
	d, err := roundTrip(c, "slow", 2*time.Second)
	if err != nil || d < 200*time.Millisecond {
		t.Fatalf("with 200ms latency: %v, %v", d, err)
	}
	n.Heal()
	if err := n.Add("a->b", Toxic{Name: "r", Type: "reset_peer", Stream: "upstream", Attrs: map[string]int64{"timeout": 50}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	if _, err := roundTrip(c, "gone", time.Second); err == nil {
		t.Fatal("connection survived reset_peer")
	}
}

func TestNetTimeoutDrops(t *testing.T) {
	n, c := echoLink(t)
	if err := n.Add("a->b", Toxic{Name: "t", Type: "timeout", Stream: "upstream", Attrs: map[string]int64{"timeout": 0}}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(c, "lost", 300*time.Millisecond); err == nil {
		t.Fatal("data crossed a timeout toxic")
	}
	n.Heal()
	// Dropped, not held: the next bytes are the first to come back.
	if _, err := roundTrip(c, "next", time.Second); err != nil {
		t.Fatal(err)
	}
}
