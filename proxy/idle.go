package proxy

import (
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// A backend connection can end while its client is idle: the server's
// wait_timeout, a KILL, a restart. The client would learn it only from its
// next statement's error 2013, inside whatever it does next. Instead, once
// the client has been idle for idleWatchDelay, the connection watches its
// backend: if the server closes it (after an ERR packet, which is passed
// on), the client connection is closed at once, as a direct connection's
// would be, and a driver's pool sees a dead connection before using it.
// A busy connection never reaches the watch; arming it costs a timer reset
// per command.

// idleWatchDelay is how long a client is idle before its backend is watched.
var idleWatchDelay = 200 * time.Millisecond

type idleWatch struct {
	mu      sync.Mutex
	timer   *time.Timer
	armed   bool
	running bool
	done    chan struct{}
}

// armWatch starts the idle clock (the client has nothing buffered).
func (c *conn) armWatch() {
	w := &c.watch
	w.mu.Lock()
	w.armed = true
	if w.timer == nil {
		w.timer = time.AfterFunc(idleWatchDelay, c.watchBackend)
	} else {
		w.timer.Reset(idleWatchDelay)
	}
	w.mu.Unlock()
}

// disarmWatch stops the idle clock and, if the watch runs, interrupts it
// (a read deadline in the past) and waits for it, so that the backend is
// the command's alone again.
func (c *conn) disarmWatch() {
	w := &c.watch
	w.mu.Lock()
	w.armed = false
	if w.timer != nil {
		w.timer.Stop()
	}
	running, done := w.running, w.done
	w.mu.Unlock()
	if !running {
		return
	}
	nc := c.backend.nc
	_ = nc.SetReadDeadline(time.Now())
	<-done
	_ = nc.SetReadDeadline(time.Time{})
	w.mu.Lock()
	w.running = false
	w.mu.Unlock()
}

// watchBackend waits for the backend to say anything while the client is
// idle. A timeout is disarmWatch interrupting it; anything else means the
// server ended the session: its packets (an ERR saying why) go to the
// client, and the connection closes.
func (c *conn) watchBackend() {
	w := &c.watch
	w.mu.Lock()
	if !w.armed || w.running || c.backend == nil {
		w.mu.Unlock()
		return
	}
	w.running = true
	w.done = make(chan struct{})
	done := w.done
	w.mu.Unlock()
	defer close(done)

	_, err := c.backend.r.Peek(1)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return // disarmed: the client sent a command
	}
	if err == nil {
		// The server speaks unasked: an ERR before it closes (MariaDB's
		// 1927 on KILL, 4031 on a timeout). Pass it on as it came.
		if p, first, _, rerr := c.backend.readPacket(maxAuthPacket); rerr == nil {
			_ = c.sendRaw(p, first)
		}
	}
	c.closeSockets() // now, not when the context's AfterFunc gets to it
	c.cancel()
	c.s.m.backendIdleClosed.Inc()
	c.log.Debug("backend closed while the client was idle: closed the client connection", zap.NamedError("reason", err))
}
