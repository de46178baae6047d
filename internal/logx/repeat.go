// Package logx holds mlproxy's additions to zap.
//
// LimitRepeats wraps a zapcore.Core so that a warning or error repeated in a
// burst (a link retrying every few milliseconds, a thousand clients refused
// the same way) is written once, then summed up in one more line that says
// how many times it repeated, instead of filling the log with thousands of
// copies. zap's own sampler (zap.Config.Sampling, zapcore.NewSamplerWithOptions)
// is not used for this: past its quota it drops lines and tells the reader
// nothing about how many were dropped, and its key is the message alone, so
// one peer's flood would hide another peer's first error.
package logx

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults for Options left at zero.
const (
	DefaultWindow  = 10 * time.Second
	DefaultMaxKeys = 1024
)

// keyFields are the fields whose values, with the level, the logger's name
// and the message, tell one repeated line from another. They name what a
// line is about (which link, which table) and what went wrong (the error's
// text, redacted or not). Every other field (gtid, file and pos, attempt,
// retry_in, rows, worker, key_hash, client address) is left out of the key on
// purpose: it changes from one occurrence to the next and would make every
// line unique. The summary line carries the last occurrence's values of those
// fields.
var keyFields = map[string]bool{
	"region": true,
	"peer":   true,
	"schema": true,
	"table":  true,
	"error":  true,
}

// Options tunes LimitRepeats.
type Options struct {
	// Window is how long repeats of a written line are counted instead of
	// written (0 = DefaultWindow).
	Window time.Duration
	// MaxKeys bounds the number of distinct lines remembered; the least
	// recently seen is forgotten first, its count written out if it has one
	// (0 = DefaultMaxKeys).
	MaxKeys int
}

// LimitRepeats returns a core that writes through core, except for repeated
// Warn and Error lines (same level, logger name, message and keyFields
// values, from the call or from With). The first is written and opens a
// window of o.Window; the repeats within it are counted instead of written.
// When the window ends the count is written as one line: the last repeat's
// entry (without its stack trace) and fields plus "repeated" (how many lines
// were not written) and "window" (o.Window, as "10s"). The window ends on a
// timer, so a burst that stops is still reported within o.Window. A line
// that keeps repeating gives one count per window; one that comes after a
// quiet window is written again. Sync writes every pending count at once
// (the process must Sync before it exits, or the last counts are lost).
//
// Debug and Info lines (lifecycle, per-batch summaries) are never limited:
// they are rare by design, and a limit would hide the order of events.
// DPanic, Panic and Fatal are never limited either.
//
// Cores derived with With share one limiter; their context fields take part
// in the key. core's Write must write what its Check accepts (true of
// zapcore.NewCore; not of a zapcore.NewTee of cores at different levels).
func LimitRepeats(core zapcore.Core, o Options) zapcore.Core {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = DefaultMaxKeys
	}
	l := &limiter{window: o.Window, windowText: o.Window.String()}
	keys, err := simplelru.NewLRU(o.MaxKeys, l.evicted)
	if err != nil {
		panic(err) // only for a size <= 0, ruled out above
	}
	l.keys = keys
	return &repeatCore{inner: core, l: l}
}

// repeatCore is one logger's view of a shared limiter.
type repeatCore struct {
	inner zapcore.Core // writes, with this logger's context
	l     *limiter
	ctx   string // the context's keyFields, as written into a key
}

var _ zapcore.Core = (*repeatCore)(nil)

func (c *repeatCore) Enabled(lvl zapcore.Level) bool { return c.inner.Enabled(lvl) }

// Level lets zap.Logger.Level and zapcore.LevelOf see the wrapped core's level.
func (c *repeatCore) Level() zapcore.Level { return zapcore.LevelOf(c.inner) }

func (c *repeatCore) With(fields []zapcore.Field) zapcore.Core {
	var b strings.Builder
	b.WriteString(c.ctx)
	appendKey(&b, fields)
	return &repeatCore{inner: c.inner.With(fields), l: c.l, ctx: b.String()}
}

func (c *repeatCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.inner.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *repeatCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if ent.Level != zapcore.WarnLevel && ent.Level != zapcore.ErrorLevel {
		return c.inner.Write(ent, fields)
	}
	var b strings.Builder
	b.WriteString(ent.Level.String())
	b.WriteByte(0)
	b.WriteString(ent.LoggerName)
	b.WriteByte(0)
	b.WriteString(ent.Message)
	b.WriteByte(0)
	b.WriteString(c.ctx)
	appendKey(&b, fields)
	if !c.l.admit(b.String(), ent, fields, c.inner) {
		return nil
	}
	return c.inner.Write(ent, fields)
}

// Sync writes every pending count, then syncs the wrapped core.
func (c *repeatCore) Sync() error {
	return errors.Join(c.l.flush(), c.inner.Sync())
}

// appendKey writes the keyFields among fields to b, each as key=value.
func appendKey(b *strings.Builder, fields []zapcore.Field) {
	for _, f := range fields {
		if !keyFields[f.Key] {
			continue
		}
		b.WriteString(f.Key)
		b.WriteByte('=')
		switch f.Type {
		case zapcore.StringType:
			b.WriteString(f.String)
		case zapcore.ErrorType, zapcore.StringerType:
			// %v calls Error or String, and recovers if it panics.
			fmt.Fprintf(b, "%v", f.Interface)
		default:
			fmt.Fprintf(b, "%d|%s|%v", f.Integer, f.String, f.Interface)
		}
		b.WriteByte(0)
	}
}

// limiter is the state every core derived from one LimitRepeats shares.
type limiter struct {
	window     time.Duration
	windowText string

	mu   sync.Mutex
	keys *simplelru.LRU[string, *repeat] // guarded by mu
	// out collects the counts of keys evicted while mu is held, to be
	// written once it is released (guarded by mu).
	out []summary
}

// repeat is one distinct line's window (all fields guarded by limiter.mu).
type repeat struct {
	start time.Time // when the current window began
	n     int       // lines counted, not written, since start or the last summary
	// gen changes whenever the count is taken, so that a timer armed for an
	// earlier count does nothing.
	gen   uint64
	timer *time.Timer // armed while n > 0
	gone  bool        // evicted: its count was taken, its timer does nothing
	// The last counted line, and the core (with its context) that would
	// have written it: the summary repeats them.
	ent    zapcore.Entry
	fields []zapcore.Field
	core   zapcore.Core
}

// summary is a count ready to be written.
type summary struct {
	core   zapcore.Core
	ent    zapcore.Entry
	fields []zapcore.Field
}

// admit says whether a line with this key is to be written now; if not, it
// is counted. A line after its window ended writes that window's count if
// the timer did not (a busy process), and is then counted in the next
// window, as it would have been after the timer.
func (l *limiter) admit(key string, ent zapcore.Entry, fields []zapcore.Field, core zapcore.Core) bool {
	now := time.Now()
	l.mu.Lock()
	r, ok := l.keys.Get(key)
	switch {
	case !ok:
		r = &repeat{start: now}
		l.keys.Add(key, r)
	case now.Sub(r.start) < l.window:
		l.count(r, now, ent, fields, core)
		l.mu.Unlock()
		return false
	default:
		s, ok := l.take(r, now)
		r.start = now
		if ok {
			// The window ended in a burst, before its timer ran: the
			// line goes on counting in the next window, as it would
			// after the timer.
			l.count(r, now, ent, fields, core)
			l.out = append(l.out, s)
		}
	}
	out := l.out
	l.out = nil
	written := r.n == 0
	l.mu.Unlock()
	_ = write(out) // the line itself reports the sink's errors
	return written
}

// count counts a line in r's window instead of writing it, and arms the
// timer that writes the count when the window ends (mu held).
func (l *limiter) count(r *repeat, now time.Time, ent zapcore.Entry, fields []zapcore.Field, core zapcore.Core) {
	r.n++
	r.ent, r.fields, r.core = ent, slices.Clone(fields), core
	if r.timer == nil {
		gen := r.gen
		r.timer = time.AfterFunc(r.start.Add(l.window).Sub(now), func() { l.expire(r, gen) })
	}
}

// expire ends r's window on its timer: the count is written and a new
// window begins, so a line that keeps repeating is summed up once per
// window.
func (l *limiter) expire(r *repeat, gen uint64) {
	now := time.Now()
	l.mu.Lock()
	if r.gone || r.gen != gen {
		l.mu.Unlock()
		return
	}
	s, ok := l.take(r, now)
	r.start = now
	l.mu.Unlock()
	if ok {
		_ = write([]summary{s})
	}
}

// flush writes every pending count.
func (l *limiter) flush() error {
	now := time.Now()
	l.mu.Lock()
	out := l.out
	l.out = nil
	for _, r := range l.keys.Values() {
		if s, ok := l.take(r, now); ok {
			out = append(out, s)
		}
	}
	l.mu.Unlock()
	return write(out)
}

// evicted is the LRU's callback (called with mu held): a forgotten key's
// count is written, not lost.
func (l *limiter) evicted(_ string, r *repeat) {
	r.gone = true
	if s, ok := l.take(r, time.Now()); ok {
		l.out = append(l.out, s)
	}
}

// take turns r's count into a summary written at now, if there is one, and
// resets the count (mu held).
func (l *limiter) take(r *repeat, now time.Time) (summary, bool) {
	if r.n == 0 {
		return summary{}, false
	}
	ent := r.ent
	ent.Time = now
	ent.Stack = "" // the written line has it; a count is one short line
	s := summary{
		core:   r.core,
		ent:    ent,
		fields: append(r.fields, zap.Int("repeated", r.n), zap.String("window", l.windowText)),
	}
	r.n, r.gen = 0, r.gen+1
	r.ent, r.fields, r.core = zapcore.Entry{}, nil, nil
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	return s, true
}

func write(out []summary) error {
	var errs []error
	for _, s := range out {
		if err := s.core.Write(s.ent, s.fields); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
