package main

import (
	"io"
	"net"
	"sync"
)

// tcpRelay is the least a proxy can do: copy bytes both ways, nothing
// parsed. Run beside mlproxy, it shows what one extra hop costs on this
// machine, so the proxy's own cost can be told apart from the hop's.
type tcpRelay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
}

func startRelay(target string) (*tcpRelay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &tcpRelay{ln: ln, target: target}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

func (r *tcpRelay) Addr() string { return r.ln.Addr().String() }

func (r *tcpRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			b, err := net.Dial("tcp", r.target)
			if err != nil {
				c.Close()
				return
			}
			go func() { _, _ = io.Copy(b, c); b.Close() }()
			_, _ = io.Copy(c, b)
			c.Close()
		}()
	}
}

func (r *tcpRelay) Close() { r.ln.Close(); r.wg.Wait() }
