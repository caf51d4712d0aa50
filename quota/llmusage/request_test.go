package llmusage

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestEstimatePrompt(t *testing.T) {
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
		{"wrong types are absent", `{"stream":"yes","max_tokens":"lots","max_output_tokens":1.5,"stream_options":true,"input":"abcdefgh"}`,
			2, 0, false, false},
		{"negative max", `{"max_tokens":-5}`, 0, 0, false, false},
		{"not an object", `["stream",true]`, 0, 0, false, false},
		{"not json", `stream=true`, 0, 0, false, false},
		{"empty", ``, 0, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prompt, maxOut, stream, inc := EstimatePrompt([]byte(tt.body))
			if prompt != tt.prompt || maxOut != tt.maxOut || stream != tt.stream || inc != tt.includeUsage {
				t.Errorf("EstimatePrompt = %d, %d, %v, %v; want %d, %d, %v, %v",
					prompt, maxOut, stream, inc, tt.prompt, tt.maxOut, tt.stream, tt.includeUsage)
			}
		})
	}
}

func TestAddIncludeUsage(t *testing.T) {
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
			if _, _, _, inc := EstimatePrompt(out); !inc {
				t.Errorf("EstimatePrompt does not see include_usage in %s", out)
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
