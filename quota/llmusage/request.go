package llmusage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tenantquota/caddy-tenant-quota/internal/strictjson"
)

// BytesPerToken is the rule of thumb of the estimate: about four bytes of
// English text per token for OpenAI and Anthropic tokenizers. It
// underestimates code and non-Latin scripts; Request.BoundBytes is the
// bound that no tokenizer can exceed.
const BytesPerToken = 4

// MaxOutputTokens is the largest output maximum a request may ask for.
const MaxOutputTokens = 1 << 50

// MaxChoices is the most completions ("n", "best_of") a request may ask
// for, as OpenAI allows.
const MaxChoices = 128

// Output maximum fields, by API.
const (
	FieldMaxTokens           = "max_tokens"            // chat completions (legacy), completions, Anthropic
	FieldMaxCompletionTokens = "max_completion_tokens" // chat completions
	FieldMaxOutputTokens     = "max_output_tokens"     // OpenAI Responses
)

var maxFields = []string{FieldMaxTokens, FieldMaxCompletionTokens, FieldMaxOutputTokens}

// nativeMaxFields are output maxima that OpenAI-compatible servers also
// read, in place of the API's own (llama.cpp's n_predict overrides
// max_tokens): the gateway does not bound them, so a body naming one is
// refused.
var nativeMaxFields = []string{"n_predict", "num_predict", "max_new_tokens", "max_length", "max_gen_len"}

// readFields are the fields whose values bound what a request costs.
var readFields = append([]string{"model", "n", "best_of", "stream", "stream_options", "background"}, maxFields...)

// Request is what a request body says about the tokens it may use.
type Request struct {
	// Object is true when the body is a JSON object; every other field is
	// zero otherwise.
	Object bool
	// BoundBytes is an upper bound on the bytes of text a model is shown
	// for the request: the UTF-8 bytes of every string, number and object
	// key in the body, plus four bytes of punctuation per key and two per
	// object or array, except binary payloads (images, audio, file data),
	// which Parts counts instead. A byte-level BPE token covers at least
	// one byte, so no tokenizer makes more tokens of this text.
	BoundBytes int64
	// EstimateBytes is the UTF-8 bytes of the prompt text alone (strings
	// under messages, input, system, instructions and prompt, without
	// identifiers, roles and binary payloads): the rule-of-thumb estimate.
	EstimateBytes int64
	// Messages counts messages, input items and prompts, each of which
	// costs a few template tokens besides its text.
	Messages int64
	// Images, Audio and Files count binary content parts.
	Images, Audio, Files int64
	// MaxOutput is the largest of max_tokens, max_completion_tokens and
	// max_output_tokens; HasMax is false when none is set.
	MaxOutput int64
	HasMax    bool
	// MaxFields are the output maximum fields the body sets.
	MaxFields []string
	// Choices is how many completions the request asks for: the largest
	// of "n" and "best_of" (legacy completions generate best_of and
	// return n), 1 when neither is set. Each may use MaxOutput tokens.
	Choices int64
	// Model is the request's "model" ("" when absent).
	Model string
	// Stream is "stream": true; IncludeUsage is
	// "stream_options": {"include_usage": true}.
	Stream, IncludeUsage bool
	// Background is "background": true (OpenAI Responses): the output is
	// made after the response and fetched later, out of the gateway's
	// sight.
	Background bool
	// StoredState is input the backend holds rather than the body
	// carries, which the bound cannot see: a Responses
	// previous_response_id or conversation, or a stored prompt ("prompt"
	// as an object).
	StoredState bool
	// ServerTools is a tool the backend runs itself, whose input it adds
	// out of the body: Responses web_search, file_search,
	// code_interpreter, mcp, image_generation; Anthropic web_search_*,
	// web_fetch_*, code_execution_*, mcp_servers; Chat web_search_options.
	ServerTools bool
}

// serverTool reports whether a tool type is run by the backend.
func serverTool(typ string) bool {
	switch typ {
	case "web_search", "web_search_preview", "file_search", "code_interpreter", "mcp", "image_generation":
		return true
	}
	for _, p := range []string{"web_search_", "web_fetch_", "code_execution_"} {
		if strings.HasPrefix(typ, p) {
			return true
		}
	}
	return false
}

// FieldError is a request body field whose value a backend would not
// accept the way the gateway reads it.
type FieldError struct {
	Field  string
	Detail string
}

// Error implements error.
func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// ParseRequest reads an OpenAI Chat Completions, Completions, Responses or
// Embeddings, or an Anthropic Messages request body, reading the output
// maximum from any of the APIs' fields (see ParseRequestFor). A body that
// is not a JSON object yields the zero Request and no error. A body a
// backend may read differently than the gateway is a *FieldError: a key
// that appears twice in one object (Go reads the last, many parsers the
// first), a field that differs from one the gateway reads only in case,
// an output maximum that is not a whole number from 1 to MaxOutputTokens,
// a "stream" or "background" that is not a boolean, or a "model" that is
// not a string. Such a request is refused rather than guessed at.
func ParseRequest(body []byte) (Request, error) { return ParseRequestFor(body, nil) }

// ParseRequestFor is ParseRequest for an API whose output maximum is in
// outputFields (some of FieldMaxTokens, FieldMaxCompletionTokens and
// FieldMaxOutputTokens; nil for all of them, empty for an API without
// output, such as embeddings). Another API's output field is a
// *FieldError: a backend that reads only its own field and ignores
// unknown ones would not be bounded by it.
func ParseRequestFor(body []byte, outputFields []string) (Request, error) {
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil || top == nil {
		return Request{}, nil
	}
	if d := strictjson.FindDuplicate(body); d != nil {
		return Request{}, &FieldError{Field: d.Field(), Detail: "appears more than once; send each field once (parsers differ on which one they read)"}
	}
	r := Request{Object: true, Choices: 1}
	for k := range top {
		for _, f := range readFields {
			if k != f && strings.EqualFold(k, f) {
				// A backend that matches keys without regard to case (Go's
				// encoding/json does) would read what the gateway did not.
				return Request{}, &FieldError{Field: k, Detail: "is not a field of this API; did you mean " + f + "?"}
			}
		}
	}
	for k := range top {
		for _, f := range nativeMaxFields {
			if strings.EqualFold(k, f) {
				return Request{}, &FieldError{Field: k, Detail: "is a server's own output maximum, which this gateway does not bound; set the API's own (max_tokens) instead"}
			}
		}
	}
	if outputFields != nil {
		for _, f := range maxFields {
			if _, ok := top[f]; ok && !slices.Contains(outputFields, f) {
				detail := "is not a field of this API, so the backend may not honour it"
				if len(outputFields) > 0 {
					detail += "; set its output maximum with " + strings.Join(outputFields, " or ")
				} else {
					detail += "; this API has no output maximum"
				}
				return Request{}, &FieldError{Field: f, Detail: detail}
			}
		}
	}
	for _, f := range []string{"n", "best_of"} {
		raw, ok := top[f]
		if !ok || isNull(raw) {
			continue
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || n < 1 || n > MaxChoices {
			return Request{}, &FieldError{Field: f, Detail: fmt.Sprintf("must be a whole number from 1 to %d, got %s", MaxChoices, clip(raw))}
		}
		r.Choices = max(r.Choices, n)
	}
	for _, f := range maxFields {
		raw, ok := top[f]
		if !ok || isNull(raw) {
			continue
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || n < 1 || n > MaxOutputTokens {
			return Request{}, &FieldError{Field: f, Detail: fmt.Sprintf("must be a whole number from 1 to %d, got %s", int64(MaxOutputTokens), clip(raw))}
		}
		r.MaxOutput, r.HasMax = max(r.MaxOutput, n), true
		r.MaxFields = append(r.MaxFields, f)
	}
	if raw, ok := top["stream"]; ok && !isNull(raw) {
		switch string(raw) {
		case "true":
			r.Stream = true
		case "false":
		default:
			return Request{}, &FieldError{Field: "stream", Detail: "must be true or false, got " + clip(raw)}
		}
	}
	if raw, ok := top["background"]; ok {
		switch string(bytes.TrimSpace(raw)) {
		case "true":
			r.Background = true
		case "false", "null":
		default:
			return Request{}, &FieldError{Field: "background", Detail: "must be true or false, got " + clip(raw)}
		}
	}
	for _, k := range []string{"previous_response_id", "conversation"} {
		if raw, ok := top[k]; ok && !isNull(raw) && string(raw) != `""` {
			r.StoredState = true
		}
	}
	if raw, ok := top["prompt"]; ok && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		r.StoredState = true
	}
	for _, k := range []string{"mcp_servers", "web_search_options"} {
		if raw, ok := top[k]; ok && !isNull(raw) && string(raw) != "[]" {
			r.ServerTools = true
		}
	}
	if raw, ok := top["tools"]; ok {
		var tools []struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(raw, &tools) == nil {
			for _, tl := range tools {
				r.ServerTools = r.ServerTools || serverTool(tl.Type)
			}
		}
	}
	if raw, ok := top["model"]; ok {
		if json.Unmarshal(raw, &r.Model) != nil || isNull(raw) {
			return Request{}, &FieldError{Field: "model", Detail: "must be a string, got " + clip(raw)}
		}
	}
	if raw, ok := top["stream_options"]; ok {
		var opts map[string]json.RawMessage
		if json.Unmarshal(raw, &opts) == nil {
			r.IncludeUsage = bytes.Equal(opts["include_usage"], []byte("true"))
		}
	}
	var w walker
	for k, raw := range top {
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if dec.Decode(&v) != nil {
			continue
		}
		w.bound = addSat(w.bound, int64(len(k))+4)
		if binary(k, v) {
			continue
		}
		w.walk(v)
		switch k {
		case "messages", "input", "prompt":
			if a, ok := v.([]any); ok {
				r.Messages = addSat(r.Messages, int64(len(a)))
			} else {
				r.Messages = addSat(r.Messages, 1)
			}
			r.EstimateBytes = addSat(r.EstimateBytes, textBytes(v))
		case "system", "instructions":
			r.Messages = addSat(r.Messages, 1)
			r.EstimateBytes = addSat(r.EstimateBytes, textBytes(v))
		}
	}
	r.BoundBytes, r.Images, r.Audio, r.Files = w.bound, w.images, w.audio, w.files
	return r, nil
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

func clip(raw json.RawMessage) string {
	if len(raw) > 32 {
		return string(raw[:32]) + "…"
	}
	return string(raw)
}

// binaryKeys name binary payloads: they are not text a tokenizer reads, and
// the content part that holds them is counted as an image, audio or file.
var binaryKeys = map[string]bool{
	"image_url": true, "image": true, "source": true, "file_data": true,
	"input_audio": true, "audio": true,
}

// binary reports whether the value of key k is a binary payload. Anthropic's
// plain-text document source ({"type": "text", "data": ...}) is text.
func binary(k string, v any) bool {
	if !binaryKeys[k] {
		return false
	}
	m, ok := v.(map[string]any)
	return !ok || (m["type"] != "text" && m["type"] != "content")
}

// Content part types that carry an image, audio or a file.
var (
	imageParts = map[string]bool{"image_url": true, "image": true, "input_image": true}
	audioParts = map[string]bool{"input_audio": true, "audio": true}
	fileParts  = map[string]bool{"file": true, "input_file": true, "document": true}
)

// walker adds up BoundBytes and the binary parts of a decoded JSON value.
type walker struct {
	bound                int64
	images, audio, files int64
}

func (w *walker) walk(v any) {
	switch v := v.(type) {
	case string:
		w.bound = addSat(w.bound, int64(len(v)))
	case json.Number:
		w.bound = addSat(w.bound, int64(len(v)))
	case bool:
		w.bound = addSat(w.bound, 5)
	case []any:
		w.bound = addSat(w.bound, 2)
		for _, e := range v {
			w.walk(e)
		}
	case map[string]any:
		w.bound = addSat(w.bound, 2)
		if t, ok := v["type"].(string); ok {
			switch {
			case imageParts[t]:
				w.images++
			case audioParts[t]:
				w.audio++
			case fileParts[t]:
				w.files++
			}
		}
		for k, e := range v {
			w.bound = addSat(w.bound, int64(len(k))+4)
			if !binary(k, e) {
				w.walk(e)
			}
		}
	}
}

// skipKeys name values that the estimate does not count as prompt text:
// binary payloads and identifiers or enumerations.
var skipKeys = map[string]bool{
	"image_url": true, "image": true, "source": true, "file_data": true,
	"file_id": true, "input_audio": true, "audio": true, "signature": true,
	"encrypted_content": true, "cache_control": true,
	"id": true, "call_id": true, "tool_call_id": true, "tool_use_id": true,
	"type": true, "role": true,
}

// textBytes sums the lengths of the strings in v, skipping skipKeys.
func textBytes(v any) int64 {
	switch v := v.(type) {
	case string:
		return int64(len(v))
	case []any:
		var n int64
		for _, e := range v {
			n = addSat(n, textBytes(e))
		}
		return n
	case map[string]any:
		var n int64
		for k, e := range v {
			if !skipKeys[k] {
				n = addSat(n, textBytes(e))
			}
		}
		return n
	}
	return 0
}

// Rewrite returns body (a JSON object) re-encoded with the top-level fields
// in set replaced or added (removed, for a nil value). Every other top-level field is kept byte for
// byte apart from white space, and the order of fields is not kept (a body
// with duplicate keys, which ParseRequest refuses, keeps the last).
func Rewrite(body []byte, set map[string]json.RawMessage) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	for k, v := range set {
		if v == nil {
			delete(top, k)
		} else {
			top[k] = v
		}
	}
	return marshal(top)
}

// IncludeUsageOptions returns the stream_options of body with
// include_usage set to true (other options kept), for a streamed OpenAI
// Chat Completions request; ok is false when body already asks for usage,
// is not streamed, or has stream_options that are not an object.
//
// The caller decides that body is a Chat Completions (or legacy
// Completions) request, from the route: Anthropic rejects unknown fields,
// and the Responses API always reports usage.
func IncludeUsageOptions(body []byte) (json.RawMessage, bool) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		return nil, false
	}
	if !bytes.Equal(req["stream"], []byte("true")) {
		return nil, false
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := req["stream_options"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &opts); err != nil || opts == nil {
			return nil, false // not an object: the backend will say so
		}
	}
	if bytes.Equal(opts["include_usage"], []byte("true")) {
		return nil, false
	}
	opts["include_usage"] = json.RawMessage("true")
	raw, err := marshal(opts)
	if err != nil {
		return nil, false
	}
	return raw, true
}

// AddIncludeUsage makes a streamed OpenAI Chat Completions request ask for
// usage: when body is a JSON object with "stream": true and without
// "stream_options": {"include_usage": true}, it returns the body with
// stream_options.include_usage set to true (other stream_options kept) and
// true. Otherwise it returns body unchanged and false. See
// IncludeUsageOptions and Rewrite.
func AddIncludeUsage(body []byte) ([]byte, bool) {
	opts, ok := IncludeUsageOptions(body)
	if !ok {
		return body, false
	}
	out, err := Rewrite(body, map[string]json.RawMessage{"stream_options": opts})
	if err != nil {
		return body, false
	}
	return out, true
}

// marshal is json.Marshal without HTML escaping, so that values are copied
// as they came.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
