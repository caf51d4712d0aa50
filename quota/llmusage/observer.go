package llmusage

import (
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"sync"
)

// Default caps on what an Observer keeps in memory.
const (
	DefaultMaxJSONBytes  = 1 << 20
	DefaultMaxEventBytes = 1 << 20
)

// Options tunes an Observer. The zero value uses the defaults.
type Options struct {
	// MaxJSONBytes caps how much of a plain JSON body is kept for parsing
	// (decompressed size, for gzip). A longer body yields no usage.
	// Zero or negative means DefaultMaxJSONBytes.
	MaxJSONBytes int64
	// MaxEventBytes caps one server-sent event (its lines, as received).
	// A longer event is skipped; the stream goes on. Zero or negative means
	// DefaultMaxEventBytes.
	MaxEventBytes int64
}

// sink consumes (decompressed) response bytes. write reports whether it
// still wants more.
type sink interface {
	write(p []byte) bool
	usage() Usage
}

// Observer extracts token usage from a response body that the caller tees
// into it while passing the same bytes on to the client unchanged.
//
// The body's format comes from the response headers: application/json (and
// any +json type) is kept up to Options.MaxJSONBytes and parsed when Usage
// is called; text/event-stream is parsed event by event as it arrives, so
// only the current event is held. A gzip Content-Encoding is decompressed on
// the fly; any other encoding or content type yields no usage.
//
// An Observer is not safe for concurrent use: call Write, Usage and Close
// from one goroutine at a time. Close must be called when the body ends or
// the client goes away, since a gzip Observer runs a goroutine.
type Observer struct {
	sink    sink // nil: nothing to extract
	gz      *gunzipper
	stopped bool // closed, or the sink wants no more
}

// NewObserver returns an Observer for a response with the given
// Content-Type and Content-Encoding header values.
func NewObserver(contentType, contentEncoding string, opts Options) *Observer {
	if opts.MaxJSONBytes <= 0 {
		opts.MaxJSONBytes = DefaultMaxJSONBytes
	}
	if opts.MaxEventBytes <= 0 {
		opts.MaxEventBytes = DefaultMaxEventBytes
	}
	var s sink
	switch formatOf(contentType) {
	case formatSSE:
		s = &sseParser{max: opts.MaxEventBytes}
	case formatJSON:
		s = &jsonSink{max: opts.MaxJSONBytes, parsed: -1}
	default:
		return &Observer{}
	}
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
		return &Observer{sink: s}
	case "gzip", "x-gzip":
		return &Observer{gz: &gunzipper{sink: s}}
	default:
		return &Observer{}
	}
}

type format int

const (
	formatOther format = iota
	formatJSON
	formatSSE
)

// formatOf classifies a Content-Type value.
func formatOf(contentType string) format {
	t, _, _ := strings.Cut(contentType, ";")
	t = strings.ToLower(strings.TrimSpace(t))
	switch {
	case t == "text/event-stream":
		return formatSSE
	case t == "application/json", strings.HasSuffix(t, "+json"):
		return formatJSON
	}
	return formatOther
}

// Write observes the next part of the body. It never fails, never keeps p
// and always returns len(p), nil, so it can sit behind an io.TeeReader or
// io.MultiWriter without ever breaking the response. With gzip it may block
// for as long as decompressing p takes.
func (o *Observer) Write(p []byte) (int, error) {
	if o.stopped || len(p) == 0 {
		return len(p), nil
	}
	switch {
	case o.gz != nil:
		o.stopped = !o.gz.write(p)
	case o.sink != nil:
		o.stopped = !o.sink.write(p)
	}
	return len(p), nil
}

// Usage returns the usage seen so far: the final usage once the whole body
// has been written, or whatever the backend had reported when a stream was
// cut short. With gzip, call Close first to account for every byte written.
func (o *Observer) Usage() Usage {
	switch {
	case o.gz != nil:
		return o.gz.usage()
	case o.sink != nil:
		return o.sink.usage()
	}
	return Usage{}
}

// Close ends the body: later writes are ignored, and with gzip it waits for
// the decompressor to finish what it was given. Usage stays valid after
// Close. Close is idempotent and always returns nil.
func (o *Observer) Close() error {
	o.stopped = true
	if o.gz != nil {
		o.gz.close()
	}
	return nil
}

// jsonSink keeps a JSON body up to max bytes and parses it on demand.
type jsonSink struct {
	max    int64
	buf    []byte
	over   bool
	parsed int // len(buf) when t was computed; -1: never
	t      tally
}

func (j *jsonSink) write(p []byte) bool {
	if int64(len(j.buf))+int64(len(p)) > j.max {
		j.over, j.buf = true, nil
		return false
	}
	j.buf = append(j.buf, p...)
	return true
}

func (j *jsonSink) usage() Usage {
	if j.over {
		return Usage{}
	}
	if j.parsed != len(j.buf) {
		j.t = tally{}
		if hasUsageObject(j.buf) {
			j.t.decode(j.buf)
		}
		j.parsed = len(j.buf)
	}
	return j.t.usage()
}

// errStopped ends the pipe once the decompressor is done, so that a Write
// never waits for a reader that has gone.
var errStopped = errors.New("llmusage: decompression stopped")

// gunzipper decompresses into a sink. compress/gzip only pulls, so a
// goroutine reads from a pipe that Write pushes into; it starts with the
// first byte and ends at Close or at the end of the gzip data.
type gunzipper struct {
	mu   sync.Mutex // guards sink between the goroutine and usage
	sink sink

	pw     *io.PipeWriter
	done   chan struct{}
	closed bool
}

func (g *gunzipper) write(p []byte) bool {
	if g.pw == nil {
		pr, pw := io.Pipe()
		g.pw, g.done = pw, make(chan struct{})
		go g.run(pr)
	}
	_, err := g.pw.Write(p)
	return err == nil
}

func (g *gunzipper) run(pr *io.PipeReader) {
	defer close(g.done)
	defer pr.CloseWithError(errStopped)
	zr, err := gzip.NewReader(pr)
	if err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := zr.Read(buf)
		if n > 0 {
			g.mu.Lock()
			more := g.sink.write(buf[:n])
			g.mu.Unlock()
			if !more {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (g *gunzipper) usage() Usage {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sink.usage()
}

func (g *gunzipper) close() {
	if g.closed {
		return
	}
	g.closed = true
	if g.pw != nil {
		g.pw.Close()
		<-g.done
	}
}
