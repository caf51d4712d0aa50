package llmusage

import (
	"bytes"
	"encoding/json"
	"errors"
)

// BytesPerToken is the rule of thumb EstimatePrompt uses: about four bytes
// of English text per token for OpenAI and Anthropic tokenizers. It
// underestimates code and non-Latin scripts, which is acceptable for a
// reservation that is settled to the backend's real count afterwards.
const BytesPerToken = 4

// requestFields is what EstimatePrompt reads from an OpenAI Chat
// Completions, OpenAI Responses or Anthropic Messages request body.
type requestFields struct {
	Messages     any `json:"messages"`     // chat completions, Anthropic
	Input        any `json:"input"`        // Responses API
	System       any `json:"system"`       // Anthropic
	Instructions any `json:"instructions"` // Responses API
	Prompt       any `json:"prompt"`       // legacy completions

	MaxTokens           *int64 `json:"max_tokens"`            // chat completions (deprecated), Anthropic
	MaxCompletionTokens *int64 `json:"max_completion_tokens"` // chat completions
	MaxOutputTokens     *int64 `json:"max_output_tokens"`     // Responses API

	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// skipKeys name values that are not prompt text: binary payloads (images,
// files, audio, encrypted reasoning, thinking signatures) and identifiers
// or enumerations (ids, types, roles).
var skipKeys = map[string]bool{
	"image_url": true, "image": true, "source": true, "file_data": true,
	"file_id": true, "input_audio": true, "audio": true, "signature": true,
	"encrypted_content": true, "cache_control": true,
	"id": true, "call_id": true, "tool_call_id": true, "tool_use_id": true,
	"type": true, "role": true,
}

// EstimatePrompt estimates a request before it is forwarded, for a token
// reservation: promptTokens is ceil(text bytes / BytesPerToken), where the
// text bytes are the UTF-8 lengths of every string under messages, input,
// system, instructions and prompt (message text, tool call arguments, tool
// results), except the values named by binary-payload and identifier keys
// (image_url, source, file_data, input_audio, signature, encrypted_content,
// id, type, role, ...). maxOutput is the largest of max_tokens,
// max_completion_tokens and max_output_tokens, or 0 when none is set. stream
// and includeUsage report "stream" and "stream_options.include_usage"
// (which only Chat Completions needs: the other APIs always report usage).
//
// A body that is not a JSON object yields zeros; a field of the wrong type is
// treated as absent.
func EstimatePrompt(body []byte) (promptTokens int64, maxOutput int64, stream bool, includeUsage bool) {
	var req requestFields
	if err := json.Unmarshal(body, &req); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return 0, 0, false, false
		}
	}
	var n int64
	for _, v := range []any{req.Messages, req.Input, req.System, req.Instructions, req.Prompt} {
		n = addSat(n, textBytes(v))
	}
	promptTokens = n/BytesPerToken + min(n%BytesPerToken, 1)
	for _, m := range []*int64{req.MaxTokens, req.MaxCompletionTokens, req.MaxOutputTokens} {
		if m != nil {
			maxOutput = max(maxOutput, *m)
		}
	}
	includeUsage = req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	return promptTokens, maxOutput, req.Stream, includeUsage
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

// AddIncludeUsage makes a streamed OpenAI Chat Completions request ask for
// usage: when body is a JSON object with "stream": true and without
// "stream_options": {"include_usage": true}, it returns the body with
// stream_options.include_usage set to true (other stream_options kept) and
// true. Otherwise it returns body unchanged and false.
//
// The caller decides that body is a Chat Completions (or legacy
// Completions) request, from the route: Anthropic rejects unknown fields,
// and the Responses API always reports usage. Top-level fields are kept
// byte for byte apart from whitespace; their order is not.
func AddIncludeUsage(body []byte) ([]byte, bool) {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		return body, false
	}
	if !bytes.Equal(req["stream"], []byte("true")) {
		return body, false
	}
	opts := map[string]json.RawMessage{}
	if raw, ok := req["stream_options"]; ok && !bytes.Equal(raw, []byte("null")) {
		if err := json.Unmarshal(raw, &opts); err != nil || opts == nil {
			return body, false // not an object: the backend will say so
		}
	}
	if bytes.Equal(opts["include_usage"], []byte("true")) {
		return body, false
	}
	opts["include_usage"] = json.RawMessage("true")
	raw, err := marshal(opts)
	if err != nil {
		return body, false
	}
	req["stream_options"] = raw
	out, err := marshal(req)
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
