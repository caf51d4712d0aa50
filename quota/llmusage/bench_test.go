package llmusage

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// openAIStream returns a chat completions stream of n content chunks of
// about 250 bytes each (the usual size), ending in a usage chunk.
func openAIStream(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, `data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_fc9f1d7035","choices":[{"index":0,"delta":{"content":" word%d"},"logprobs":null,"finish_reason":null}],"usage":null}`+"\n\n", i)
	}
	b.WriteString(`data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":16,"total_tokens":35}}` + "\n\ndata: [DONE]\n\n")
	return b.Bytes()
}

// anthropicStream returns an Anthropic stream of n text deltas.
func anthropicStream(n int) []byte {
	var b bytes.Buffer
	b.WriteString("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n")
	for i := range n {
		fmt.Fprintf(&b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" word%d\"}}\n\n", i)
	}
	b.WriteString("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	return b.Bytes()
}

// perEvent cuts a stream into its events, as a backend flushes them.
func perEvent(data []byte) [][]byte { return bytes.SplitAfter(data, []byte("\n\n")) }

func benchObserve(b *testing.B, ct, ce string, size int, chunks [][]byte, want Usage) {
	b.Helper()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		o := NewObserver(ct, ce, Options{})
		for _, c := range chunks {
			o.Write(c)
		}
		o.Close()
		if u := o.Usage(); u != want {
			b.Fatalf("usage %+v, want %+v", u, want)
		}
	}
}

func BenchmarkSSEObserver(b *testing.B) {
	openai, anthropic := openAIStream(2000), anthropicStream(2000)
	openaiWant := Usage{InputTokens: 19, OutputTokens: 16, Found: true}
	anthropicWant := Usage{InputTokens: 25, OutputTokens: 15, Found: true}
	b.Run("openai/per-event", func(b *testing.B) {
		benchObserve(b, ctSSE, "", len(openai), perEvent(openai), openaiWant)
	})
	b.Run("openai/32KiB", func(b *testing.B) {
		benchObserve(b, ctSSE, "", len(openai), splitEvery(openai, 32<<10), openaiWant)
	})
	b.Run("anthropic/per-event", func(b *testing.B) {
		benchObserve(b, ctSSE, "", len(anthropic), perEvent(anthropic), anthropicWant)
	})
	b.Run("anthropic/crlf-32KiB", func(b *testing.B) {
		crlf := bytes.ReplaceAll(anthropic, []byte("\n"), []byte("\r\n"))
		benchObserve(b, ctSSE, "", len(crlf), splitEvery(crlf, 32<<10), anthropicWant)
	})
	b.Run("responses-fixture/per-event", func(b *testing.B) {
		data := readFixture(b, "openai_responses_stream.sse")
		benchObserve(b, ctSSE, "", len(data), perEvent(data), Usage{InputTokens: 37, OutputTokens: 11, Found: true})
	})
}

// BenchmarkSSEObserverGzip reports MB/s of decompressed stream.
func BenchmarkSSEObserverGzip(b *testing.B) {
	openai := openAIStream(2000)
	zipped := gzipped(b, openai, true)
	b.Run("openai/32KiB", func(b *testing.B) {
		benchObserve(b, ctSSE, "gzip", len(openai), splitEvery(zipped, 32<<10), Usage{InputTokens: 19, OutputTokens: 16, Found: true})
	})
}

// jsonBody returns a chat completion of about size bytes.
func jsonBody(size int) []byte {
	return fmt.Appendf(nil, `{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":%q,"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default"}`,
		strings.Repeat("The quick brown fox jumps over the lazy dog. ", size/45))
}

func BenchmarkJSONObserver(b *testing.B) {
	want := Usage{InputTokens: 19, OutputTokens: 10, Found: true}
	for _, size := range []int{1 << 10, 8 << 10, 64 << 10} {
		body := jsonBody(size)
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			benchObserve(b, ctJSON, "", len(body), splitEvery(body, 4<<10), want)
		})
	}
}

// BenchmarkJSONObserverGzip reports MB/s of decompressed body.
func BenchmarkJSONObserverGzip(b *testing.B) {
	body := jsonBody(8 << 10)
	zipped := gzipped(b, body, false)
	benchObserve(b, ctJSON, "gzip", len(body), splitEvery(zipped, 4<<10), Usage{InputTokens: 19, OutputTokens: 10, Found: true})
}

func BenchmarkParseRequest(b *testing.B) {
	body := fmt.Appendf(nil, `{"model":"gpt-4o","stream":true,"max_tokens":512,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":%q}]}`,
		strings.Repeat("Tell me about foxes. ", 200))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		ParseRequest(body)
	}
}
