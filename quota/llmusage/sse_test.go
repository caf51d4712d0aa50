package llmusage

import (
	"strings"
	"testing"
)

// TestSSEParsing checks the event stream rules that decide which bytes make
// up an event's data, using a usage object as the probe.
func TestSSEParsing(t *testing.T) {
	t.Parallel()
	const u = `{"usage":{"output_tokens":5}}`
	found := Usage{OutputTokens: 5, Found: true}
	tests := []struct {
		name string
		body string
		want Usage
	}{
		{"plain", "data: " + u + "\n\n", found},
		{"no space after colon", "data:" + u + "\n\n", found},
		{"two spaces after colon", "data:  " + u + "\n\n", found},
		{"tab is not stripped", "data:\t" + u + "\n\n", found},
		{"crlf", "data: " + u + "\r\n\r\n", found},
		{"cr", "data: " + u + "\r\r", found},
		{"lf then cr", "data: " + u + "\n\r", found},
		{"cr lf is one line end", "data: " + u + "\r\n", Usage{}},
		{"leading BOM", "\xef\xbb\xbfdata: " + u + "\n\n", found},
		{"BOM-only first line is blank", "\xef\xbb\xbf\ndata: " + u + "\n\n", found},
		{"BOM not at the start", "\n\xef\xbb\xbfdata: " + u + "\n\n", Usage{}},
		{"partial BOM", "\xef\xbbdata: " + u + "\n\n", Usage{}},
		{"two BOMs", "\xef\xbb\xbf\xef\xbb\xbfdata: " + u + "\n\n", Usage{}},
		{"data split over lines", "data: {\"usage\":\ndata: {\"output_tokens\":\ndata: 5}}\n\n", found},
		{"empty data line joins", "data: {\"usage\":{\"output_tokens\":5}\ndata\ndata: }\n\n", found},
		{"field name is case sensitive", "Data: " + u + "\n\n", Usage{}},
		{"field name with a space", "data : " + u + "\n\n", Usage{}},
		{"comment", ": " + u + "\n\n", Usage{}},
		{"comment between data lines", "data: {\"usage\":\n: hi\ndata: {\"output_tokens\":5}}\n\n", found},
		{"other fields are ignored", "event: message_delta\nid: 7\nretry: 100\ndata: " + u + "\nfoo: bar\n\n", found},
		{"event name only", "event: message_delta\n\n", Usage{}},
		{"event without data", "event: x\n\ndata: " + u + "\n\n", found},
		{"data lines of two events stay apart", "data: {\"usage\":\n\ndata: {\"output_tokens\":5}}\n\n", Usage{}},
		{"blank lines before", "\n\n\r\n\rdata: " + u + "\n\n", found},
		{"usage null", "data: {\"usage\":null}\n\n", Usage{}},
		{"spaced usage object", "data: {\"usage\" \t:  {\"output_tokens\":5}}\n\n", found},
		{"usage key in a string", "data: {\"text\":\"\\\"usage\\\":{\\\"output_tokens\\\":5}\"}\n\n", Usage{}},
		{"usage in a nested unknown place", "data: {\"choices\":[{\"usage\":{\"output_tokens\":5}}]}\n\n", Usage{}},
		{"message usage", "data: {\"message\":" + u + "}\n\n", found},
		{"response usage", "data: {\"response\":" + u + "}\n\n", found},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range chunkings([]byte(tt.body)) {
				if got := observe(t, ctSSE, "", Options{}, c.chunks); got != tt.want {
					t.Errorf("%s: usage = %+v, want %+v", c.name, got, tt.want)
				}
			}
		})
	}
}

// A CR at the end of one write and an LF at the start of the next are one
// line end, not a line end and a blank line.
func TestSSECRLFAcrossWrites(t *testing.T) {
	t.Parallel()
	o := NewObserver(ctSSE, "", Options{})
	for _, p := range []string{"data: {\"usage\":\r", "\n", "data: {\"output_tokens\":5}}\r", "", "\n", "\r\n"} {
		o.Write([]byte(p))
	}
	if got, want := o.Usage(), (Usage{OutputTokens: 5, Found: true}); got != want {
		t.Fatalf("usage = %+v, want %+v", got, want)
	}
}

// No allocation per event once the buffers have grown, for the events that
// cannot hold usage.
func TestSSENoAllocsPerEvent(t *testing.T) {
	event := []byte("data: {\"choices\":[{\"delta\":{\"content\":\"" + strings.Repeat("w", 200) + "\"}}],\"usage\":null}\n\n")
	o := NewObserver(ctSSE, "", Options{})
	o.Write(event)
	if n := testing.AllocsPerRun(100, func() {
		o.Write(event[:50])
		o.Write(event[50:])
	}); n != 0 {
		t.Errorf("%v allocations per event", n)
	}
}
