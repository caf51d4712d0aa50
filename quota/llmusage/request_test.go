package llmusage

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestParseRequestEstimate: the rule-of-thumb estimate counts prompt text
// alone, and the fields the gateway reads.
func TestParseRequestEstimate(t *testing.T) {
	t.Parallel()
	image := strings.Repeat("A", 10000)
	tests := []struct {
		name                 string
		body                 string
		prompt, maxOut       int64
		stream, includeUsage bool
	}{
		{"chat completions", `{"model":"gpt-4o","messages":[
			{"role":"system","content":"You are terse."},
			{"role":"user","content":"Say hello."}],
			"max_tokens":256}`,
			(14 + 10 + 3) / 4, 256, false, false},
		{"chat completions streamed with usage", `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},
			"messages":[{"role":"user","content":"abcd"}],"max_completion_tokens":100,"max_tokens":50}`,
			1, 100, true, true},
		{"chat content parts and an image", `{"messages":[{"role":"user","content":[
			{"type":"text","text":"What is in this image?"},
			{"type":"image_url","image_url":{"url":"data:image/png;base64,` + image + `","detail":"high"}}]}]}`,
			(22 + 3) / 4, 0, false, false},
		{"chat tool call and result", `{"messages":[
			{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
			{"role":"tool","tool_call_id":"call_abc","content":"sunny"}]}`,
			(11 + 16 + 5 + 3) / 4, 0, false, false},
		{"responses api", `{"model":"gpt-4.1","instructions":"Be kind.","input":"Tell me a joke.","max_output_tokens":500,"stream":true}`,
			(8 + 15 + 3) / 4, 500, true, false},
		{"responses api items", `{"input":[{"role":"user","content":[{"type":"input_text","text":"hi"},
			{"type":"input_image","image_url":"data:image/png;base64,` + image + `"},
			{"type":"input_file","file_data":"` + image + `","filename":"a.pdf"}]},
			{"type":"reasoning","encrypted_content":"` + image + `","summary":[]}]}`,
			(2 + 5 + 3) / 4, 0, false, false},
		{"anthropic", `{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
			"system":[{"type":"text","text":"You are Claude.","cache_control":{"type":"ephemeral"}}],
			"messages":[{"role":"user","content":[
				{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + image + `"}},
				{"type":"text","text":"Describe it."}]},
				{"role":"assistant","content":[{"type":"thinking","thinking":"Hmm.","signature":"` + image + `"},
					{"type":"tool_use","id":"toolu_1","name":"look","input":{"query":"cats"}}]},
				{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"two cats"}]}]}`,
			(15 + 12 + 4 + 4 + 4 + 8 + 3) / 4, 1024, true, false},
		{"legacy completions", `{"prompt":["ab","cd"],"max_tokens":7}`, 1, 7, false, false},
		{"multi-byte text counts bytes", `{"input":"日本語"}`, (9 + 3) / 4, 0, false, false},
		{"escapes count decoded", `{"input":"\u00e9\n"}`, 1, 0, false, false},
		{"empty object", `{}`, 0, 0, false, false},
		{"null maxima are absent", `{"max_tokens":null,"stream":null,"stream_options":true,"input":"abcdefgh"}`,
			2, 0, false, false},
		{"not an object", `["stream",true]`, 0, 0, false, false},
		{"not json", `stream=true`, 0, 0, false, false},
		{"empty", ``, 0, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequest([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			prompt := r.EstimateBytes/BytesPerToken + min(r.EstimateBytes%BytesPerToken, 1)
			if prompt != tt.prompt || r.MaxOutput != tt.maxOut || r.Stream != tt.stream || r.IncludeUsage != tt.includeUsage {
				t.Errorf("ParseRequest = %d, %d, %v, %v; want %d, %d, %v, %v",
					prompt, r.MaxOutput, r.Stream, r.IncludeUsage, tt.prompt, tt.maxOut, tt.stream, tt.includeUsage)
			}
			if r.BoundBytes < r.EstimateBytes {
				t.Errorf("bound %d below the estimate's %d bytes", r.BoundBytes, r.EstimateBytes)
			}
		})
	}
}

func TestAddIncludeUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		changed bool
		options string // the stream_options wanted in the result
	}{
		{"streamed without options", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"<b>hi</b>"}]}`,
			true, `{"include_usage":true}`},
		{"options without include_usage", `{"stream":true,"stream_options":{"include_obfuscation":false}}`,
			true, `{"include_obfuscation":false,"include_usage":true}`},
		{"include_usage false", `{"stream":true,"stream_options":{"include_usage":false}}`,
			true, `{"include_usage":true}`},
		{"options null", `{"stream":true,"stream_options":null}`, true, `{"include_usage":true}`},
		{"already asks", `{"stream":true,"stream_options":{"include_usage":true}}`, false, ""},
		{"not streamed", `{"stream":false,"messages":[]}`, false, ""},
		{"stream absent", `{"messages":[]}`, false, ""},
		{"stream not a bool", `{"stream":"true"}`, false, ""},
		{"options not an object", `{"stream":true,"stream_options":[1]}`, false, ""},
		{"not an object", `[{"stream":true}]`, false, ""},
		{"null", `null`, false, ""},
		{"not json", `{"stream":true`, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, changed := AddIncludeUsage([]byte(tt.body))
			if changed != tt.changed {
				t.Fatalf("changed = %v, want %v (%s)", changed, tt.changed, out)
			}
			if !changed {
				if string(out) != tt.body {
					t.Fatalf("unchanged body rewritten: %s", out)
				}
				return
			}
			var got, orig map[string]json.RawMessage
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("result is not JSON: %v: %s", err, out)
			}
			json.Unmarshal([]byte(tt.body), &orig)
			if string(got["stream_options"]) != tt.options {
				t.Errorf("stream_options = %s, want %s", got["stream_options"], tt.options)
			}
			for k, v := range orig {
				if k != "stream_options" && compact(t, got[k]) != compact(t, v) {
					t.Errorf("field %s = %s, want %s", k, got[k], v)
				}
			}
			if len(got) != len(orig) && !(len(got) == len(orig)+1 && orig["stream_options"] == nil) {
				t.Errorf("fields: got %d, had %d", len(got), len(orig))
			}
			if r, _ := ParseRequest(out); !r.IncludeUsage {
				t.Errorf("ParseRequest does not see include_usage in %s", out)
			}
		})
	}
}

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(raw); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestParseRequestRefuses: an output maximum or stream a backend could read
// differently from the gateway is refused, naming the field.
func TestParseRequestRefuses(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ body, field string }{
		{`{"max_tokens":9223372036854775807}`, "max_tokens"},
		{`{"max_tokens":1125899906842625}`, "max_tokens"},
		{`{"max_tokens":-5}`, "max_tokens"},
		{`{"max_tokens":0}`, "max_tokens"},
		{`{"max_completion_tokens":1.5}`, "max_completion_tokens"},
		{`{"max_output_tokens":"100"}`, "max_output_tokens"},
		{`{"max_tokens":1e3}`, "max_tokens"},
		{`{"max_tokens":[1]}`, "max_tokens"},
		{`{"stream":"true"}`, "stream"},
		{`{"stream":1}`, "stream"},
		{`{"max_tokens":10,"MAX_TOKENS":100000}`, "MAX_TOKENS"},
		{`{"Max_Completion_Tokens":100000}`, "Max_Completion_Tokens"},
		{`{"max_to\u212aens":100000}`, "max_to\u212aens"},
		{`{"N":50}`, "N"},
		{`{"model":"gpt-4o-mini","MODEL":"o3-pro"}`, "MODEL"},
		// Duplicate keys: Go reads the last, many backends the first.
		{`{"max_tokens":900000,"max_tokens":5}`, "max_tokens"},
		{`{"max_tokens":900000,"max\u005ftokens":5}`, "max_tokens"},
		{`{"n":64,"n":1}`, "n"},
		{`{"model":"gpt-4o","model":"gpt-4o-mini"}`, "model"},
		{`{"messages":[{"role":"user","content":"a","content":"` + strings.Repeat("x", 100) + `"}]}`, "messages[0].content"},
		// A model that is not a string.
		{`{"model":4}`, "model"},
		{`{"model":null}`, "model"},
		{`{"model":["gpt-4o"]}`, "model"},
		{`{"background":"yes"}`, "background"},
		// Servers' own maxima that override the API's.
		{`{"max_tokens":1,"n_predict":-1}`, "n_predict"},
		{`{"max_tokens":1,"NUM_PREDICT":100000}`, "NUM_PREDICT"},
		{`{"max_new_tokens":100000}`, "max_new_tokens"},
	} {
		_, err := ParseRequest([]byte(tt.body))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("ParseRequest(%s) = %v, want a FieldError on %s", tt.body, err, tt.field)
		}
	}
}

// TestParseRequestForRefusesOtherAPIsFields: a backend that reads only its
// own API's output field and ignores unknown ones would not be bounded by
// another API's, so naming one is refused, naming the field and the one to
// use.
func TestParseRequestForRefusesOtherAPIsFields(t *testing.T) {
	t.Parallel()
	chat := []string{FieldMaxTokens, FieldMaxCompletionTokens}
	for _, tt := range []struct {
		name   string
		fields []string
		body   string
		field  string // "" when accepted
	}{
		{"chat max_output_tokens", chat, `{"max_output_tokens":1}`, FieldMaxOutputTokens},
		{"chat max_tokens", chat, `{"max_tokens":5}`, ""},
		{"chat max_completion_tokens", chat, `{"max_completion_tokens":5}`, ""},
		{"responses max_tokens", []string{FieldMaxOutputTokens}, `{"max_tokens":1}`, FieldMaxTokens},
		{"responses max_completion_tokens", []string{FieldMaxOutputTokens}, `{"max_output_tokens":9,"max_completion_tokens":1}`, FieldMaxCompletionTokens},
		{"responses own", []string{FieldMaxOutputTokens}, `{"max_output_tokens":9}`, ""},
		{"completions max_output_tokens", []string{FieldMaxTokens}, `{"max_output_tokens":1}`, FieldMaxOutputTokens},
		{"messages max_completion_tokens", []string{FieldMaxTokens}, `{"max_completion_tokens":1}`, FieldMaxCompletionTokens},
		{"embeddings", []string{}, `{"max_tokens":1}`, FieldMaxTokens},
		{"any", nil, `{"max_output_tokens":1,"max_tokens":2}`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequestFor([]byte(tt.body), tt.fields)
			var fe *FieldError
			switch {
			case tt.field == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.field == "" && !r.HasMax:
				t.Fatal("no maximum read")
			case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
				t.Fatalf("got %v, want a FieldError on %s", err, tt.field)
			case tt.field != "" && len(tt.fields) > 0 && !strings.Contains(fe.Detail, tt.fields[0]):
				t.Fatalf("%q does not name the field to use", fe.Detail)
			}
		})
	}
}

// TestParseRequestBound: the strict bound counts every byte a model may be
// shown (tools, keys, numbers), and parts instead of their binary payloads.
func TestParseRequestBound(t *testing.T) {
	t.Parallel()
	image := strings.Repeat("A", 10000)
	body := `{"model":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
		"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + image + `"}},
		{"type":"input_audio","input_audio":{"data":"` + image + `","format":"wav"}},{"type":"file","file":{"file_data":"` + image + `"}}]},
		{"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"` + strings.Repeat("d", 3000) + `"}}]}]}`
	r, err := ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.Images != 1 || r.Audio != 1 || r.Files != 2 || r.Messages != 2 {
		t.Fatalf("parts %d/%d/%d, messages %d", r.Images, r.Audio, r.Files, r.Messages)
	}
	if r.BoundBytes < 3000+int64(len("function")+len("city")+len("string")+len("object")) || r.BoundBytes > 4000 {
		t.Fatalf("bound %d bytes: a text document and the tools count, binary payloads do not", r.BoundBytes)
	}
}

// TestParseRequestStateAndServerTools: input the backend holds or makes
// itself is told apart from what the body carries.
func TestParseRequestStateAndServerTools(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		body          string
		state, server bool
	}{
		{`{"input":"hi"}`, false, false},
		{`{"input":"hi","previous_response_id":"resp_1"}`, true, false},
		{`{"input":"hi","previous_response_id":null}`, false, false},
		{`{"input":"hi","conversation":"conv_1"}`, true, false},
		{`{"prompt":{"id":"pmpt_1"}}`, true, false},
		{`{"prompt":"once upon a time"}`, false, false},
		{`{"input":"hi","tools":[{"type":"function","name":"f"}]}`, false, false},
		{`{"input":"hi","tools":[{"type":"web_search"}]}`, false, true},
		{`{"input":"hi","tools":[{"type":"mcp","server_url":"https://x"}]}`, false, true},
		{`{"messages":[],"tools":[{"type":"web_search_20250305","name":"web_search"}]}`, false, true},
		{`{"messages":[],"tools":[{"name":"get_weather","input_schema":{}}]}`, false, false},
		{`{"messages":[],"mcp_servers":[{"type":"url","url":"https://x"}]}`, false, true},
		{`{"messages":[],"web_search_options":{}}`, false, true},
	} {
		r, err := ParseRequest([]byte(tt.body))
		if err != nil || r.StoredState != tt.state || r.ServerTools != tt.server {
			t.Errorf("%s: state %v server %v (%v), want %v %v", tt.body, r.StoredState, r.ServerTools, err, tt.state, tt.server)
		}
	}
}
