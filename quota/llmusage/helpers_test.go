package llmusage

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	ctJSON = "application/json"
	ctSSE  = "text/event-stream; charset=utf-8"
)

// fixture is a recorded-shape response body and the usage it carries.
type fixture struct {
	file string
	ct   string
	want Usage
}

var fixtures = []fixture{
	{"openai_chat_stream.sse", ctSSE, Usage{InputTokens: 19, OutputTokens: 16, Found: true}},
	{"openai_chat_stream_no_usage.sse", ctSSE, Usage{}},
	{"openai_responses_stream.sse", ctSSE, Usage{InputTokens: 37, OutputTokens: 11, Found: true}},
	{"anthropic_stream.sse", ctSSE, Usage{InputTokens: 25, OutputTokens: 15, Found: true}},
	{"anthropic_stream_tools.sse", ctSSE, Usage{InputTokens: 480 + 2048 + 8192, OutputTokens: 89, Found: true}},
	{"openai_chat.json", ctJSON, Usage{InputTokens: 19, OutputTokens: 10, Found: true}},
	{"openai_responses.json", ctJSON, Usage{InputTokens: 36, OutputTokens: 87, Found: true}},
	{"anthropic_message.json", "Application/JSON", Usage{InputTokens: 2095 + 100 + 2000, OutputTokens: 503, Found: true}},
	{"openai_error.json", ctJSON, Usage{}},
}

func readFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// chunking is one way of cutting a body into writes.
type chunking struct {
	name   string
	chunks [][]byte
}

// chunkings returns data whole, one byte at a time, and cut at random
// (seeded, so failures reproduce) into small and large pieces.
func chunkings(data []byte) []chunking {
	cs := []chunking{{"whole", [][]byte{data}}, {"bytewise", splitEvery(data, 1)}}
	for seed := uint64(1); seed <= 4; seed++ {
		cs = append(cs, chunking{fmt.Sprintf("random-small-%d", seed), splitRandom(data, seed, 16)})
	}
	cs = append(cs, chunking{"random-large-5", splitRandom(data, 5, 2048)})
	return cs
}

func splitEvery(data []byte, n int) [][]byte {
	var out [][]byte
	for len(data) > n {
		out = append(out, data[:n])
		data = data[n:]
	}
	return append(out, data)
}

// splitRandom cuts data into pieces of 0 to maxLen bytes (empty writes
// included, as a proxy may make them).
func splitRandom(data []byte, seed uint64, maxLen int) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out [][]byte
	for len(data) > 0 {
		n := min(r.IntN(maxLen+1), len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// lineEndings returns an SSE body with its LF line ends as LF, CRLF, CR and
// a mix of the three.
func lineEndings(data []byte) map[string][]byte {
	ends := []string{"\r\n", "\n", "\r"}
	var mixed bytes.Buffer
	for i, line := range bytes.Split(data, []byte("\n")) {
		if i > 0 {
			mixed.WriteString(ends[i%3])
		}
		mixed.Write(line)
	}
	return map[string][]byte{
		"lf":    data,
		"crlf":  bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n")),
		"cr":    bytes.ReplaceAll(data, []byte("\n"), []byte("\r")),
		"mixed": mixed.Bytes(),
	}
}

// gzipped compresses data in one go, or, with flushEvents, with a sync
// flush after every SSE event as a streaming server does.
func gzipped(tb testing.TB, data []byte, flushEvents bool) []byte {
	tb.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	parts := [][]byte{data}
	if flushEvents {
		parts = bytes.SplitAfter(data, []byte("\n\n"))
	}
	for _, p := range parts {
		if _, err := zw.Write(p); err != nil {
			tb.Fatal(err)
		}
		if err := zw.Flush(); err != nil {
			tb.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// observe feeds chunks to a new Observer, checks that every Write passes
// the bytes through untouched, closes it and returns its usage.
func observe(tb testing.TB, ct, ce string, opts Options, chunks [][]byte) Usage {
	tb.Helper()
	o := NewObserver(ct, ce, opts)
	orig := bytes.Join(chunks, nil)
	for _, c := range chunks {
		if n, err := o.Write(c); n != len(c) || err != nil {
			tb.Fatalf("Write(%d bytes) = %d, %v; want %d, nil", len(c), n, err, len(c))
		}
	}
	if !bytes.Equal(bytes.Join(chunks, nil), orig) {
		tb.Fatalf("Write modified its input")
	}
	if err := o.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
	u := o.Usage()
	checkSane(tb, u)
	return u
}

func checkSane(tb testing.TB, u Usage) {
	tb.Helper()
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.TotalTokens < 0 || u.Total() < 0 {
		tb.Fatalf("negative usage %+v", u)
	}
	if !u.Found && u != (Usage{}) {
		tb.Fatalf("usage %+v has counts but Found false", u)
	}
}

// sseEvents builds a stream from event name and data pairs.
func sseEvents(pairs ...string) []byte {
	var b strings.Builder
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", pairs[i], pairs[i+1])
	}
	return []byte(b.String())
}
