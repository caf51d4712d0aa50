package llmusage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// fuzzOptions are the caps each fuzz input is observed under: the defaults,
// and caps small enough for the fuzzer to cross.
var fuzzOptions = []Options{{}, {MaxEventBytes: 64, MaxJSONBytes: 64}}

// loadFixtures returns every fixture body of the given content type with
// its expected usage.
func loadFixtures(f *testing.F, ct string) ([][]byte, []Usage) {
	f.Helper()
	var bodies [][]byte
	var wants []Usage
	for _, fx := range fixtures {
		if formatOf(fx.ct) == formatOf(ct) {
			bodies = append(bodies, readFixture(f, fx.file))
			wants = append(wants, fx.want)
		}
	}
	return bodies, wants
}

// checkChunkingInvariant observes data whole and cut by seed under each
// fuzzOptions entry and fails when the results differ or are not sane.
func checkChunkingInvariant(t *testing.T, ct string, data []byte, seed uint64) {
	t.Helper()
	for _, opts := range fuzzOptions {
		whole := observe(t, ct, "", opts, [][]byte{data})
		if split := observe(t, ct, "", opts, splitRandom(data, seed, 1+int(seed%37))); split != whole {
			t.Fatalf("opts %+v: whole %+v, split %+v", opts, whole, split)
		}
	}
}

// checkFixtureSplit cuts a fixture in two at a fuzzed position and checks
// that the usage is still the fixture's.
func checkFixtureSplit(t *testing.T, ct string, bodies [][]byte, wants []Usage, seed uint64) {
	t.Helper()
	i := int(seed % uint64(len(bodies)))
	body := bodies[i]
	pos := int((seed >> 8) % uint64(len(body)+1))
	if got := observe(t, ct, "", Options{}, [][]byte{body[:pos], body[pos:]}); got != wants[i] {
		t.Fatalf("fixture %d split at %d: usage %+v, want %+v", i, pos, got, wants[i])
	}
}

func FuzzSSEObserver(f *testing.F) {
	bodies, wants := loadFixtures(f, ctSSE)
	// Small seeds keep minimizing cheap; the fixtures themselves are
	// checked on every run by checkFixtureSplit.
	seeds := [][]byte{
		sseEvents(
			"message_start", `{"type":"message_start","message":{"usage":{"input_tokens":25,"cache_read_input_tokens":3,"output_tokens":1}}}`,
			"ping", `{"type": "ping"}`,
			"message_delta", `{"type":"message_delta","usage":{"output_tokens":15}}`),
		[]byte("data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":16}}\n\ndata: [DONE]\n\n"),
		sseEvents("response.completed", `{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":37,"output_tokens":11}}}`),
		[]byte("\xef\xbb\xbf: hi\r\ndata: {\"usage\":\r\ndata: {\"input_tokens\":1}}\r\r\n"),
		[]byte("data: " + strings.Repeat("x", 70) + "\n\ndata: {\"usage\":{}}\n\n"),
	}
	for i, s := range seeds {
		for _, v := range lineEndings(s) {
			f.Add(v, uint64(i)*7919)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		checkChunkingInvariant(t, ctSSE, data, seed)
		if seed%4 == 1 { // costly, and TestObserverEverySplit covers it all
			checkFixtureSplit(t, ctSSE, bodies, wants, seed)
		}
		if seed%8 == 0 {
			// Any bytes claiming to be gzip: no panic, no hang.
			observe(t, ctSSE, "gzip", Options{}, splitRandom(data, seed, 64))
		}
	})
}

func FuzzJSONObserver(f *testing.F) {
	bodies, wants := loadFixtures(f, ctJSON)
	for i, s := range []string{
		`{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":19,"completion_tokens":10}}`,
		`{"type":"message","usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":503}}`,
		`{"object":"response","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87}}`,
		`{"error":{"message":"bad","type":"invalid_request_error"}}`,
		`{"message":{"usage":{"input_tokens":1}},"response":{"usage":{"output_tokens":2}},"usage":null}`,
		`{"usage":{"prompt_tokens":1e2,"completion_tokens":-3,"input_tokens":"4"}}`,
	} {
		f.Add([]byte(s), uint64(i)*104729)
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		checkChunkingInvariant(t, ctJSON, data, seed)
		if seed%4 == 1 { // costly, and TestObserverEverySplit covers it all
			checkFixtureSplit(t, ctJSON, bodies, wants, seed)
		}
		if u := observe(t, ctJSON, "", Options{}, [][]byte{data}); u.Found && !json.Valid(data) {
			t.Fatalf("usage %+v from invalid JSON", u)
		}
	})
}

func FuzzFromHeader(f *testing.F) {
	for _, s := range []string{"123", "input=10, output=20", "prompt=1; completion=2; total=3", "x=1", "input=", "-1", " 0 ", "input=1,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, ok := FromHeader(s)
		if ok != u.Found || (!ok && u != (Usage{})) {
			t.Fatalf("FromHeader(%q) = %+v, %v", s, u, ok)
		}
		checkSane(t, u)
		if !ok {
			return
		}
		// What FromHeader accepts, it reads back the same from its canonical
		// named form.
		canon := fmt.Sprintf("input=%d, output=%d; total=%d", u.InputTokens, u.OutputTokens, u.TotalTokens)
		if again, ok := FromHeader(canon); !ok || again != u {
			t.Fatalf("FromHeader(%q) = %+v but FromHeader(%q) = %+v, %v", s, u, canon, again, ok)
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":10}`,
		`{"stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[]}`,
		`{"input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"max_output_tokens":5}`,
		`{"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"t"}]}],"max_tokens":1}`,
		`{"stream":true,"Stream":false,"stream_options":null}`,
		`[]`, `null`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseRequest(body)
		if err == nil && (r.BoundBytes < r.EstimateBytes || r.EstimateBytes < 0 || r.MaxOutput < 0 || r.MaxOutput > MaxOutputTokens) {
			t.Fatalf("ParseRequest = %+v", r)
		}
		if n := int64(len(body)); r.EstimateBytes > n {
			t.Fatalf("prompt estimate %d bytes for a %d-byte body", r.EstimateBytes, n)
		}
		orig := bytes.Clone(body)
		out, changed := AddIncludeUsage(body)
		if !bytes.Equal(body, orig) {
			t.Fatal("AddIncludeUsage modified its input")
		}
		if !changed {
			if !bytes.Equal(out, body) {
				t.Fatal("AddIncludeUsage rewrote a body it reports unchanged")
			}
			return
		}
		var req struct {
			Stream        json.RawMessage            `json:"stream"`
			StreamOptions map[string]json.RawMessage `json:"stream_options"`
		}
		if err := json.Unmarshal(out, &req); err != nil {
			t.Fatalf("result is not a JSON object: %v: %s", err, out)
		}
		if string(req.StreamOptions["include_usage"]) != "true" {
			t.Fatalf("result does not ask for usage: %s", out)
		}
		if _, changed := AddIncludeUsage(out); changed {
			t.Fatalf("AddIncludeUsage is not idempotent on %s", out)
		}
	})
}
