package strictjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestFindDuplicate(t *testing.T) {
	t.Parallel()
	many := func(dup bool) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range 40 {
			fmt.Fprintf(&b, `"k%d": %d,`, i, i)
		}
		if dup {
			b.WriteString(`"k7": 0,`)
		}
		b.WriteString(`"end": true}`)
		return b.String()
	}
	for _, tc := range []struct {
		name, body, key, path, field string
	}{
		{"none", `{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}`, "", "", ""},
		{"top", `{"max_tokens": 900000, "max_tokens": 5}`, "max_tokens", "$", "max_tokens"},
		{"escaped", `{"max_tokens": 900000, "max\u005ftokens": 5}`, "max_tokens", "$", "max_tokens"},
		{"escaped slash", `{"a\/b": 1, "a/b": 2}`, "a/b", "$", "a/b"},
		{"nested", `{"messages": [{"role": "user"}, {"role": "user", "content": "a", "content": "b"}]}`, "content", "$.messages[1]", "messages[1].content"},
		{"deep object", `{"a": {"b": {"c": 1, "c": 2}}}`, "c", "$.a.b", "a.b.c"},
		{"odd key", `{"a b": {"x": 1, "x": 1}}`, "x", `$["a b"]`, `["a b"].x`},
		{"same key in siblings", `{"a": {"x": 1}, "b": {"x": 2}}`, "", "", ""},
		{"case differs", `{"Model": 1, "model": 2}`, "", "", ""},
		{"strings hold braces", `{"a": "}{\"a\":", "b": "\\"}`, "", "", ""},
		{"many keys", many(false), "", "", ""},
		{"many keys dup", many(true), "k7", "$", "k7"},
		{"array", `[{"a": 1}, {"a": 1, "a": 2}]`, "a", "$[1]", "[1].a"},
		{"scalar", `5`, "", "", ""},
		{"invalid utf8 keys fold", "{\"\xff\": 1, \"\xfe\": 2}", "\ufffd", "$", "\ufffd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !json.Valid([]byte(tc.body)) {
				t.Fatalf("test body is not valid JSON: %s", tc.body)
			}
			d := FindDuplicate([]byte(tc.body))
			if tc.key == "" {
				if d != nil {
					t.Fatalf("found %+v, want none", d)
				}
				return
			}
			if d == nil || d.Key != tc.key || d.Path != tc.path || d.Field() != tc.field {
				t.Fatalf("found %+v (field %q), want key %q at %q (field %q)", d, fieldOf(d), tc.key, tc.path, tc.field)
			}
		})
	}
}

func fieldOf(d *Duplicate) string {
	if d == nil {
		return ""
	}
	return d.Field()
}

// reference finds duplicates with encoding/json's tokenizer.
func reference(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func() (bool, error)
	walk = func() (bool, error) {
		tok, err := dec.Token()
		if err != nil {
			return false, err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return false, err
				}
				if seen[k.(string)] {
					return true, nil
				}
				seen[k.(string)] = true
				if dup, err := walk(); dup || err != nil {
					return dup, err
				}
			}
			_, err = dec.Token()
			return false, err
		case json.Delim('['):
			for dec.More() {
				if dup, err := walk(); dup || err != nil {
					return dup, err
				}
			}
			_, err = dec.Token()
			return false, err
		}
		return false, nil
	}
	dup, _ := walk()
	return dup
}

func FuzzFindDuplicate(f *testing.F) {
	for _, s := range []string{`{"a":1,"a":2}`, `{"a":{"b":[1,{"c":1,"c\u0000":2}]}}`, `{"\u00e9":1,"é":2}`, `[{"x":"\\\"","x":0}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			FindDuplicate(data) // must not panic or hang
			return
		}
		got, want := FindDuplicate(data) != nil, reference(data)
		if got != want {
			t.Fatalf("FindDuplicate %v, reference %v for %q", got, want, data)
		}
	})
}

func BenchmarkFindDuplicate(b *testing.B) {
	var buf strings.Builder
	buf.WriteString(`{"model": "gpt-4o", "max_tokens": 100, "messages": [`)
	for i := range 200 {
		if i > 0 {
			buf.WriteString(",")
		}
		fmt.Fprintf(&buf, `{"role": "user", "content": [{"type": "text", "text": "%s"}]}`, strings.Repeat("lorem ipsum ", 20))
	}
	buf.WriteString("]}")
	data := []byte(buf.String())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if FindDuplicate(data) != nil {
			b.Fatal("duplicate")
		}
	}
}

func TestFindDuplicateFold(t *testing.T) {
	t.Parallel()
	if d := FindDuplicateFold([]byte(`{"name":"a","NAME":"b"}`)); d == nil || d.Key != "NAME" {
		t.Fatalf("case variants: %+v", d)
	}
	if d := FindDuplicate([]byte(`{"name":"a","NAME":"b"}`)); d != nil {
		t.Fatalf("FindDuplicate folds: %+v", d)
	}
	if d := FindDuplicateFold([]byte(`{"limits":{"tokens":1,"Tokens":2}}`)); d == nil || d.Field() != "limits.Tokens" {
		t.Fatalf("nested case variants: %+v", d)
	}
}
