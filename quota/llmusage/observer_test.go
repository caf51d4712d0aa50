package llmusage

import (
	"bytes"
	"compress/gzip"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestObserverFixtures(t *testing.T) {
	t.Parallel()
	for _, fx := range fixtures {
		t.Run(fx.file, func(t *testing.T) {
			data := readFixture(t, fx.file)
			variants := map[string][]byte{"lf": data}
			if strings.HasPrefix(fx.ct, "text/event-stream") {
				variants = lineEndings(data)
			}
			for ending, body := range variants {
				encodings := map[string][]byte{
					"identity":     body,
					"gzip":         gzipped(t, body, false),
					"gzip-flushed": gzipped(t, body, true),
				}
				for enc, wire := range encodings {
					ce := enc
					if enc == "gzip-flushed" {
						ce = "gzip"
					}
					for _, c := range chunkings(wire) {
						t.Run(ending+"/"+enc+"/"+c.name, func(t *testing.T) {
							if got := observe(t, fx.ct, ce, Options{}, c.chunks); got != fx.want {
								t.Errorf("usage = %+v, want %+v", got, fx.want)
							}
						})
					}
				}
			}
		})
	}
}

// Every fixture cut in two at every position gives the fixture's usage.
func TestObserverEverySplit(t *testing.T) {
	t.Parallel()
	for _, fx := range fixtures {
		t.Run(fx.file, func(t *testing.T) {
			data := readFixture(t, fx.file)
			for pos := range len(data) + 1 {
				if got := observe(t, fx.ct, "", Options{}, [][]byte{data[:pos], data[pos:]}); got != fx.want {
					t.Fatalf("split at %d: usage = %+v, want %+v", pos, got, fx.want)
				}
			}
		})
	}
}

func TestObserverContentTypes(t *testing.T) {
	t.Parallel()
	sse := readFixture(t, "anthropic_stream.sse")
	body := readFixture(t, "anthropic_message.json")
	tests := []struct {
		name   string
		ct, ce string
		body   []byte
		found  bool
	}{
		{"sse", "text/event-stream", "", sse, true},
		{"sse upper case with params", "Text/Event-Stream; charset=UTF-8", "", sse, true},
		{"json with charset", "application/json; charset=utf-8", "", body, true},
		{"json suffix type", "application/vnd.example+json", "", body, true},
		{"identity encoding", "application/json", "identity", body, true},
		{"x-gzip", "application/json", "x-gzip", gzipped(t, body, false), true},
		{"gzip upper case", "application/json", " GZIP ", gzipped(t, body, false), true},
		{"json body labelled text/plain", "text/plain", "", body, false},
		{"no content type", "", "", body, false},
		{"sse body labelled json", "application/json", "", sse, false},
		{"json body labelled sse", "text/event-stream", "", body, false},
		{"brotli", "application/json", "br", body, false},
		{"zstd", "text/event-stream", "zstd", sse, false},
		{"stacked encodings", "application/json", "gzip, br", gzipped(t, body, false), false},
		{"gzip header on plain body", "application/json", "gzip", body, false},
		{"gzip header on plain stream", "text/event-stream", "gzip", sse, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range chunkings(tt.body) {
				if got := observe(t, tt.ct, tt.ce, Options{}, c.chunks); got.Found != tt.found {
					t.Errorf("%s: usage = %+v, want Found %v", c.name, got, tt.found)
				}
			}
		})
	}
}

// A client that goes away mid-stream is charged for what the backend had
// reported by then.
func TestObserverDisconnect(t *testing.T) {
	t.Parallel()
	anthropic := readFixture(t, "anthropic_stream.sse")
	chat := readFixture(t, "openai_chat_stream.sse")
	responses := readFixture(t, "openai_responses_stream.sse")
	cut := func(t *testing.T, data []byte, marker string, extra int) []byte {
		t.Helper()
		i := bytes.Index(data, []byte(marker))
		if i < 0 {
			t.Fatalf("marker %q not in fixture", marker)
		}
		return data[:i+extra]
	}
	tests := []struct {
		name   string
		body   func(t *testing.T) []byte
		want   Usage
		zipped bool
	}{
		{"anthropic before message_delta", func(t *testing.T) []byte {
			return cut(t, anthropic, "event: message_delta", 0)
		}, Usage{InputTokens: 25, OutputTokens: 1, Found: true}, false},
		{"anthropic inside message_delta", func(t *testing.T) []byte {
			return cut(t, anthropic, `"output_tokens":15`, 10)
		}, Usage{InputTokens: 25, OutputTokens: 1, Found: true}, false},
		{"anthropic message_delta without its blank line", func(t *testing.T) []byte {
			return cut(t, anthropic, "event: message_stop", -1)
		}, Usage{InputTokens: 25, OutputTokens: 1, Found: true}, false},
		{"anthropic after message_delta", func(t *testing.T) []byte {
			return cut(t, anthropic, "event: message_stop", 0)
		}, Usage{InputTokens: 25, OutputTokens: 15, Found: true}, false},
		{"anthropic before message_start ends", func(t *testing.T) []byte {
			return cut(t, anthropic, "event: content_block_start", -2)
		}, Usage{}, false},
		{"openai chat before the usage chunk", func(t *testing.T) []byte {
			return cut(t, chat, `"choices":[],"usage":{`, -200)
		}, Usage{}, false},
		{"openai chat before [DONE]", func(t *testing.T) []byte {
			return cut(t, chat, "data: [DONE]", 0)
		}, Usage{InputTokens: 19, OutputTokens: 16, Found: true}, false},
		{"responses before response.completed", func(t *testing.T) []byte {
			return cut(t, responses, "event: response.completed", 0)
		}, Usage{}, false},
		{"gzip anthropic cut after message_start", func(t *testing.T) []byte {
			return gzipPrefix(t, anthropic, "event: content_block_start")
		}, Usage{InputTokens: 25, OutputTokens: 1, Found: true}, true},
		{"gzip anthropic cut after message_delta", func(t *testing.T) []byte {
			return gzipPrefix(t, anthropic, "event: message_stop")
		}, Usage{InputTokens: 25, OutputTokens: 15, Found: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ce := ""
			if tt.zipped {
				ce = "gzip"
			}
			for _, c := range chunkings(tt.body(t)) {
				if got := observe(t, ctSSE, ce, Options{}, c.chunks); got != tt.want {
					t.Errorf("%s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
		})
	}
}

// gzipPrefix compresses data with a sync flush after every event and
// returns the compressed bytes up to the flush that precedes marker, plus a
// few bytes of what follows, as a connection cut mid-stream leaves them.
func gzipPrefix(t *testing.T, data []byte, marker string) []byte {
	t.Helper()
	i := bytes.Index(data, []byte(marker))
	if i < 0 {
		t.Fatalf("marker %q not in fixture", marker)
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(data[:i])
	zw.Flush()
	n := b.Len()
	zw.Write(data[i:])
	zw.Close()
	return b.Bytes()[:n+3]
}

// Usage can be asked for mid-stream and the stream then goes on.
func TestObserverUsageMidStream(t *testing.T) {
	t.Parallel()
	data := readFixture(t, "anthropic_stream.sse")
	i := bytes.Index(data, []byte("event: message_delta"))
	o := NewObserver(ctSSE, "", Options{})
	o.Write(data[:i])
	if got, want := o.Usage(), (Usage{InputTokens: 25, OutputTokens: 1, Found: true}); got != want {
		t.Fatalf("mid-stream usage = %+v, want %+v", got, want)
	}
	o.Write(data[i:])
	if got, want := o.Usage(), (Usage{InputTokens: 25, OutputTokens: 15, Found: true}); got != want {
		t.Fatalf("final usage = %+v, want %+v", got, want)
	}
	o.Close()
	o.Write([]byte("event: message_delta\ndata: {\"usage\":{\"output_tokens\":99}}\n\n"))
	if got, want := o.Usage(), (Usage{InputTokens: 25, OutputTokens: 15, Found: true}); got != want {
		t.Fatalf("usage after a write after Close = %+v, want %+v", got, want)
	}
}

func TestObserverJSONMidBody(t *testing.T) {
	t.Parallel()
	data := readFixture(t, "openai_chat.json")
	o := NewObserver(ctJSON, "", Options{})
	o.Write(data[:len(data)/2])
	if got := o.Usage(); got.Found {
		t.Fatalf("half a JSON body gave usage %+v", got)
	}
	o.Write(data[len(data)/2:])
	if got, want := o.Usage(), (Usage{InputTokens: 19, OutputTokens: 10, Found: true}); got != want {
		t.Fatalf("usage = %+v, want %+v", got, want)
	}
}

// Anthropic's message_delta usage is cumulative: the latest wins, and a
// delta that repeats the input counts replaces them.
func TestObserverAnthropicCumulative(t *testing.T) {
	t.Parallel()
	start := `{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}`
	tests := []struct {
		name   string
		deltas []string
		want   Usage
	}{
		{"one delta", []string{`{"type":"message_delta","usage":{"output_tokens":7}}`},
			Usage{InputTokens: 15, OutputTokens: 7, Found: true}},
		{"running totals are not summed", []string{
			`{"type":"message_delta","usage":{"output_tokens":7}}`,
			`{"type":"message_delta","usage":{"output_tokens":30}}`,
			`{"type":"message_delta","usage":{"output_tokens":42}}`,
		}, Usage{InputTokens: 15, OutputTokens: 42, Found: true}},
		{"delta with input counts", []string{
			`{"type":"message_delta","usage":{"output_tokens":7}}`,
			`{"type":"message_delta","usage":{"input_tokens":12,"cache_read_input_tokens":5,"cache_creation_input_tokens":3,"output_tokens":9}}`,
		}, Usage{InputTokens: 20, OutputTokens: 9, Found: true}},
		{"null and malformed counts keep the last good value", []string{
			`{"type":"message_delta","usage":{"output_tokens":7}}`,
			`{"type":"message_delta","usage":{"output_tokens":null,"input_tokens":"12"}}`,
			`{"type":"message_delta","usage":{"output_tokens":8.5}}`,
		}, Usage{InputTokens: 15, OutputTokens: 7, Found: true}},
		{"integral floats count", []string{
			`{"type":"message_delta","usage":{"output_tokens":15.0}}`,
			`{"type":"message_delta","usage":{"output_tokens":1e2}}`,
		}, Usage{InputTokens: 15, OutputTokens: 100, Found: true}},
		{"negative counts are zero", []string{`{"type":"message_delta","usage":{"output_tokens":-7}}`},
			Usage{InputTokens: 15, OutputTokens: 0, Found: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pairs := []string{"message_start", start}
			for _, d := range tt.deltas {
				pairs = append(pairs, "message_delta", d)
			}
			pairs = append(pairs, "message_stop", `{"type":"message_stop"}`)
			for _, c := range chunkings(sseEvents(pairs...)) {
				if got := observe(t, ctSSE, "", Options{}, c.chunks); got != tt.want {
					t.Errorf("%s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
		})
	}
}

func TestObserverOversized(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 4096)
	start := `{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}`
	tests := []struct {
		name string
		body []byte
		opts Options
		want Usage
	}{
		{"oversized content event is skipped", sseEvents(
			"message_start", start,
			"content_block_delta", `{"type":"content_block_delta","delta":{"type":"text_delta","text":"`+big+`"},"usage":{"output_tokens":1000}}`,
			"message_delta", `{"type":"message_delta","usage":{"output_tokens":15}}`,
		), Options{MaxEventBytes: 512}, Usage{InputTokens: 25, OutputTokens: 15, Found: true}},
		{"oversized usage event is skipped", sseEvents(
			"message_start", start,
			"message_delta", `{"type":"message_delta","pad":"`+big+`","usage":{"output_tokens":15}}`,
		), Options{MaxEventBytes: 512}, Usage{InputTokens: 25, OutputTokens: 1, Found: true}},
		{"oversized comment and multi-line event", []byte(
			": " + big + "\n" + "data: {\"usage\":{\"output_tokens\":5}}\n\n" +
				"data: {\"usage\":\ndata: " + big + "\n\n" +
				"data: {\"usage\":{\"input_tokens\":3}}\n\n"),
			Options{MaxEventBytes: 512}, Usage{InputTokens: 3, Found: true}},
		{"event at the cap is kept", []byte("data: {\"usage\":{\"output_tokens\":5}}\n\n"),
			Options{MaxEventBytes: int64(len("data: {\"usage\":{\"output_tokens\":5}}"))}, Usage{OutputTokens: 5, Found: true}},
		{"event one byte over the cap is skipped", []byte("data: {\"usage\":{\"output_tokens\":5}}\n\n"),
			Options{MaxEventBytes: int64(len("data: {\"usage\":{\"output_tokens\":5}}")) - 1}, Usage{}},
		{"default cap keeps a large event", sseEvents(
			"message_delta", `{"type":"message_delta","pad":"`+strings.Repeat(big, 100)+`","usage":{"output_tokens":15}}`,
		), Options{}, Usage{OutputTokens: 15, Found: true}},
		{"json body over the cap", readFixture(t, "openai_chat.json"), Options{MaxJSONBytes: 100}, Usage{}},
		{"json body at the cap", readFixture(t, "openai_chat.json"),
			Options{MaxJSONBytes: int64(len(readFixture(t, "openai_chat.json")))}, Usage{InputTokens: 19, OutputTokens: 10, Found: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := ctSSE
			if tt.body[0] == '{' {
				ct = ctJSON
			}
			for _, c := range chunkings(tt.body) {
				if got := observe(t, ct, "", tt.opts, c.chunks); got != tt.want {
					t.Errorf("%s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
			for _, c := range chunkings(gzipped(t, tt.body, true)) {
				if got := observe(t, ct, "gzip", tt.opts, c.chunks); got != tt.want {
					t.Errorf("gzip %s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
		})
	}
}

// The memory an SSE observer holds stays near MaxEventBytes whatever the
// event sizes and chunking.
func TestObserverMemoryBounded(t *testing.T) {
	t.Parallel()
	const limit = 1024
	line := "data: " + strings.Repeat("y", 100*limit) + "\n"
	body := []byte(line + line + "\n" + line + "\r\n")
	for _, c := range chunkings(body) {
		o := NewObserver(ctSSE, "", Options{MaxEventBytes: limit})
		p := o.sink.(*sseParser)
		for _, chunk := range c.chunks {
			o.Write(chunk)
			if held := cap(p.line) + cap(p.data); held > 3*limit {
				t.Fatalf("%s: holds %d bytes, cap %d", c.name, held, limit)
			}
		}
	}
}

func TestObserverMalformed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ct   string
		body string
		want Usage
	}{
		{"truncated json body", ctJSON, `{"usage":{"prompt_tokens":19,"completion_tokens":1`, Usage{}},
		{"json body that is an array", ctJSON, `[{"usage":{"prompt_tokens":19}}]`, Usage{}},
		{"json body with trailing garbage", ctJSON, `{"usage":{"prompt_tokens":19}} x`, Usage{}},
		{"json body with a wrongly typed sibling", ctJSON, `{"message":"oops","usage":{"prompt_tokens":19,"completion_tokens":2}}`,
			Usage{InputTokens: 19, OutputTokens: 2, Found: true}},
		{"json usage null", ctJSON, `{"usage":null}`, Usage{}},
		{"json usage empty", ctJSON, `{"usage":{}}`, Usage{}},
		{"empty json body", ctJSON, ``, Usage{}},
		{"huge counts", ctJSON, `{"usage":{"input_tokens":9223372036854775807,"cache_read_input_tokens":9223372036854775807,"output_tokens":99999999999999999999}}`,
			Usage{InputTokens: 9223372036854775807, Found: true}},
		{"garbage events around a good one", ctSSE,
			"data: {\"usage\":{\"input_tokens\":\n\n" +
				"data: {\"usage\": {\"prompt_tokens\": \"12\"}}\n\n" +
				"data: [DONE]\n\n" +
				"data: \xff\xfe\x00\n\n" +
				"data: {\"usage\" : {\"prompt_tokens\" : 4, \"completion_tokens\" : 2}}\n\n" +
				"data: {\"usage\":{\"input_tokens\":1}\n\n",
			Usage{InputTokens: 4, OutputTokens: 2, Found: true}},
		{"final event without blank line is dropped", ctSSE, "data: {\"usage\":{\"input_tokens\":1}}\n", Usage{}},
		{"no line end at all", ctSSE, "data: {\"usage\":{\"input_tokens\":1}}", Usage{}},
		{"binary noise", ctSSE, "\x00\x01\r\r\n\n\xef\xbb\xbf\xff::\n\n", Usage{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range chunkings([]byte(tt.body)) {
				if got := observe(t, tt.ct, "", Options{}, c.chunks); got != tt.want {
					t.Errorf("%s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
		})
	}
}

// Malformed gzip never blocks a Write or Close and never leaks the
// decompressing goroutine.
func TestObserverGzipNoLeak(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	body := readFixture(t, "anthropic_stream.sse")
	good := gzipped(t, body, true)
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0xff
	bodies := map[string][]byte{
		"good":               good,
		"corrupt":            corrupt,
		"not gzip":           body,
		"truncated":          good[:len(good)/2],
		"trailing garbage":   append(bytes.Clone(good), "garbage after the gzip member"...),
		"two members":        append(bytes.Clone(good), gzipped(t, []byte("data: {}\n\n"), false)...),
		"empty":              nil,
		"header only":        good[:10],
		"json bomb over cap": gzipped(t, bytes.Repeat([]byte(" "), 8<<20), false),
	}
	before := runtime.NumGoroutine()
	for name, b := range bodies {
		t.Run(name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, c := range chunkings(b) {
					observe(t, ctSSE, "gzip", Options{}, c.chunks)
					observe(t, ctJSON, "gzip", Options{}, c.chunks)
				}
				o := NewObserver(ctSSE, "gzip", Options{})
				o.Close() // never written to
				o.Close()
			}()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("observer blocked")
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines before, %d after", before, n)
	}
}

func TestUsageTotal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		u    Usage
		want int64
	}{
		{Usage{}, 0},
		{Usage{InputTokens: 10, OutputTokens: 20, Found: true}, 30},
		{Usage{TotalTokens: 7, Found: true}, 7},
		{Usage{InputTokens: 10, OutputTokens: 20, TotalTokens: 25, Found: true}, 25},
		{Usage{InputTokens: 1 << 62, OutputTokens: 1<<63 - 1, Found: true}, 1<<63 - 1},
	}
	for _, tt := range tests {
		if got := tt.u.Total(); got != tt.want {
			t.Errorf("%+v.Total() = %d, want %d", tt.u, got, tt.want)
		}
	}
}
