package llmusage

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
)

// Usage is the token usage of one request.
//
// InputTokens includes prompt-cache reads and writes where the API reports
// them separately (Anthropic's cache_read_input_tokens and
// cache_creation_input_tokens); OpenAI's cached tokens are already part of
// its input count. TotalTokens is set only by a source that reports a total
// without a split (see FromHeader). Found reports whether any usage was seen
// at all; the zero Usage means "nothing known".
type Usage struct {
	InputTokens  int64
	OutputTokens int64
	TotalTokens  int64
	Found        bool
}

// Total returns TotalTokens when it is set, and InputTokens + OutputTokens
// otherwise.
func (u Usage) Total() int64 {
	if u.TotalTokens > 0 {
		return u.TotalTokens
	}
	return addSat(u.InputTokens, u.OutputTokens)
}

// addSat adds two non-negative counts, saturating instead of overflowing.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// usageFields is a usage object as any of the supported APIs writes it.
type usageFields struct {
	PromptTokens     count `json:"prompt_tokens"`     // OpenAI Chat Completions
	CompletionTokens count `json:"completion_tokens"` // OpenAI Chat Completions
	InputTokens      count `json:"input_tokens"`      // OpenAI Responses, Anthropic
	OutputTokens     count `json:"output_tokens"`     // OpenAI Responses, Anthropic
	CacheCreation    count `json:"cache_creation_input_tokens"`
	CacheRead        count `json:"cache_read_input_tokens"`
}

// count is a token count that remembers whether it was present. An
// integer, or a number with an integral value such as 15.0 or 1e2, is
// present; anything else (null, a string, a fraction, a value beyond int64)
// is absent, so a malformed field never overwrites a good earlier value.
type count struct {
	n  int64
	ok bool
}

// UnmarshalJSON implements json.Unmarshaler; it never fails.
func (c *count) UnmarshalJSON(b []byte) error {
	*c = count{}
	if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		*c = count{n: max(n, 0), ok: true}
	} else if f, err := strconv.ParseFloat(string(b), 64); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<63 {
		*c = count{n: max(int64(f), 0), ok: true}
	}
	return nil
}

type nestedUsage struct {
	Usage *usageFields `json:"usage"`
}

// envelope finds the usage object wherever the supported APIs put it: at the
// top (chat completions, Anthropic message and message_delta, Responses API
// response object), under "message" (Anthropic message_start) or under
// "response" (Responses API response.completed and friends).
type envelope struct {
	Usage    *usageFields `json:"usage"`
	Message  *nestedUsage `json:"message"`
	Response *nestedUsage `json:"response"`
}

// tally accumulates usage across a response. Each component keeps the
// latest value reported: every supported API reports cumulative counts
// (Anthropic's message_delta repeats the running output total), so summing
// would double count.
type tally struct {
	input, cacheCreation, cacheRead, output int64
	found                                   bool
}

// decode applies the usage found in one JSON document. Documents that are
// not JSON, or carry no usage, change nothing. A field of the wrong type
// (say "message" as a string) spoils only itself: encoding/json keeps
// decoding after a type error.
func (t *tally) decode(doc []byte) {
	var env envelope
	if err := json.Unmarshal(doc, &env); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return
		}
	}
	if env.Message != nil {
		t.apply(env.Message.Usage)
	}
	if env.Response != nil {
		t.apply(env.Response.Usage)
	}
	t.apply(env.Usage)
}

func (t *tally) apply(u *usageFields) {
	if u == nil {
		return
	}
	set := func(dst *int64, vals ...count) {
		for _, v := range vals {
			if v.ok {
				*dst = v.n
				t.found = true
				return
			}
		}
	}
	set(&t.input, u.InputTokens, u.PromptTokens)
	set(&t.cacheCreation, u.CacheCreation)
	set(&t.cacheRead, u.CacheRead)
	set(&t.output, u.OutputTokens, u.CompletionTokens)
}

func (t *tally) usage() Usage {
	if !t.found {
		return Usage{}
	}
	return Usage{
		InputTokens:  addSat(addSat(t.input, t.cacheCreation), t.cacheRead),
		OutputTokens: t.output,
		Found:        true,
	}
}

var usageKey = []byte(`"usage"`)

// hasUsageObject reports whether doc may hold a usage object: a "usage" key
// whose value is an object, not null. It is a cheap filter that keeps
// json.Unmarshal off the many stream events that cannot carry usage
// (content deltas, and OpenAI chunks with "usage":null). A quote inside a
// JSON string is escaped, so text that merely mentions "usage" never
// matches.
func hasUsageObject(doc []byte) bool {
	for {
		i := bytes.Index(doc, usageKey)
		if i < 0 {
			return false
		}
		doc = skipSpace(doc[i+len(usageKey):])
		if len(doc) > 0 && doc[0] == ':' {
			if rest := skipSpace(doc[1:]); len(rest) > 0 && rest[0] == '{' {
				return true
			}
		}
	}
}

func skipSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}
