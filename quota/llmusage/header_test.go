package llmusage

import "testing"

func TestFromHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value string
		want  Usage
		ok    bool
	}{
		{"123", Usage{TotalTokens: 123, Found: true}, true},
		{" 0 ", Usage{TotalTokens: 0, Found: true}, true},
		{"input=10, output=20", Usage{InputTokens: 10, OutputTokens: 20, Found: true}, true},
		{"input=10;output=20", Usage{InputTokens: 10, OutputTokens: 20, Found: true}, true},
		{" Input = 10 ,OUTPUT=20 ", Usage{InputTokens: 10, OutputTokens: 20, Found: true}, true},
		{"prompt=1, completion=2, total=3", Usage{InputTokens: 1, OutputTokens: 2, TotalTokens: 3, Found: true}, true},
		{"prompt_tokens=1, completion_tokens=2, total_tokens=3", Usage{InputTokens: 1, OutputTokens: 2, TotalTokens: 3, Found: true}, true},
		{"input_tokens=1; output_tokens=2", Usage{InputTokens: 1, OutputTokens: 2, Found: true}, true},
		{"output=5", Usage{OutputTokens: 5, Found: true}, true},
		{"total=9", Usage{TotalTokens: 9, Found: true}, true},
		{"input=1, cached=4", Usage{InputTokens: 1, Found: true}, true},
		{"input=1,,output=2,", Usage{InputTokens: 1, OutputTokens: 2, Found: true}, true},
		{"9223372036854775807", Usage{TotalTokens: 9223372036854775807, Found: true}, true},
		{"", Usage{}, false},
		{"   ", Usage{}, false},
		{"cached=4", Usage{}, false},
		{"-5", Usage{}, false},
		{"+5", Usage{}, false},
		{"1_000", Usage{}, false},
		{"1.5", Usage{}, false},
		{"12 tokens", Usage{}, false},
		{"9223372036854775808", Usage{}, false},
		{"input=-1", Usage{}, false},
		{"input=", Usage{}, false},
		{"input", Usage{}, false},
		{"input=1, output", Usage{}, false},
		{"input=1 output=2", Usage{}, false},
		{"input=0x10", Usage{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, ok := FromHeader(tt.value)
			if got != tt.want || ok != tt.ok {
				t.Errorf("FromHeader(%q) = %+v, %v; want %+v, %v", tt.value, got, ok, tt.want, tt.ok)
			}
		})
	}
}
