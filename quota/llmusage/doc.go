// Package llmusage extracts LLM token usage from backend responses and
// estimates it from requests, for metering tenants of chatbot backends.
//
// It understands OpenAI Chat Completions, the OpenAI Responses API and
// Anthropic Messages, as plain JSON bodies and as server-sent event streams,
// gzip-encoded or not (Observer), a backend-reported usage header
// (FromHeader), and request bodies (ParseRequest, Rewrite, IncludeUsageOptions) for
// reservations and for streams that would otherwise report no usage.
//
// An Observer watches a copy of the response bytes: it never modifies,
// holds back or delays what the client receives, it keeps at most one SSE
// event or one capped JSON body in memory, and malformed input only ever
// yields missing or partial usage, never an error or a panic.
//
// The package is standard library only and must not import Caddy or the
// quota domain: the Caddy handler feeds it bytes and charges what it
// returns.
package llmusage
