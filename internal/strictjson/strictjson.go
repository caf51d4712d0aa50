// Package strictjson finds what encoding/json forgives and other parsers
// read differently: a key that appears twice in one object. Go keeps the
// last of duplicate keys, many parsers keep the first, so a body whose
// meaning depends on the parser is refused rather than forwarded.
//
// It reads bytes only: no allocation unless a key carries escapes or
// non-ASCII, or an object has more than 16 keys. It imports nothing of the project.
package strictjson

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// maxDepth bounds nesting as encoding/json does.
const maxDepth = 10000

// Duplicate is a key found twice in one object.
type Duplicate struct {
	// Key is the key, unescaped.
	Key string
	// Path locates the object, in JSONPath-like form: "$", "$.messages[2]".
	Path string
}

// Error implements error.
func (d *Duplicate) Error() string {
	if d.Path == "$" {
		return "the key " + strconv.Quote(d.Key) + " appears more than once"
	}
	return "the key " + strconv.Quote(d.Key) + " appears more than once in " + d.Path
}

// Field is the key's location as a request parameter: "max_tokens",
// "messages[2].content".
func (d *Duplicate) Field() string {
	p := strings.TrimPrefix(strings.TrimPrefix(d.Path, "$"), ".")
	if p == "" {
		return d.Key
	}
	return p + "." + d.Key
}

// FindDuplicate returns the first duplicate key of data, which must be
// valid JSON (check it first: on malformed input the answer is nil or a
// duplicate found before the fault). Keys are compared after unescaping,
// so "max\u005ftokens" is "max_tokens". It is linear in len(data) apart
// from objects with more than 16 keys, which use a map.
func FindDuplicate(data []byte) *Duplicate { return find(data, false) }

// FindDuplicateFold is FindDuplicate with keys compared without regard to
// case, as encoding/json matches them to struct fields: {"name": "a",
// "NAME": "b"} decodes to "b" in Go and to "a" elsewhere.
func FindDuplicateFold(data []byte) *Duplicate { return find(data, true) }

func find(data []byte, fold bool) *Duplicate {
	s := scanner{data: data, fold: fold}
	d, _ := s.value(0)
	if d != nil {
		d.Path = "$" + d.Path
	}
	return d
}

type scanner struct {
	data []byte
	i    int
	fold bool // keys equal without regard to case are duplicates
}

func (s *scanner) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// value skips one value; a duplicate inside it is returned with the path
// below it. ok is false on malformed input.
func (s *scanner) value(depth int) (d *Duplicate, ok bool) {
	if depth > maxDepth {
		return nil, false
	}
	s.ws()
	if s.i >= len(s.data) {
		return nil, false
	}
	switch s.data[s.i] {
	case '{':
		return s.object(depth)
	case '[':
		s.i++
		for n := 0; ; n++ {
			s.ws()
			if s.i < len(s.data) && s.data[s.i] == ']' {
				s.i++
				return nil, true
			}
			if d, ok := s.value(depth + 1); d != nil || !ok {
				if d != nil {
					d.Path = "[" + strconv.Itoa(n) + "]" + d.Path
				}
				return d, ok
			}
			s.ws()
			if s.i >= len(s.data) || (s.data[s.i] != ',' && s.data[s.i] != ']') {
				return nil, false
			}
			if s.data[s.i] == ',' {
				s.i++
			}
		}
	case '"':
		_, ok := s.str()
		return nil, ok
	default:
		start := s.i
		defer func() {
			if s.i == start {
				ok = false // not a value: no progress
			}
		}()
		for s.i < len(s.data) {
			switch s.data[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return nil, true
			}
			s.i++
		}
		return nil, true
	}
}

func (s *scanner) object(depth int) (*Duplicate, bool) {
	s.i++ // '{'
	var small [16][]byte
	keys := small[:0]
	var many map[string]struct{}
	for {
		s.ws()
		if s.i >= len(s.data) {
			return nil, false
		}
		if s.data[s.i] == '}' {
			s.i++
			return nil, true
		}
		raw, ok := s.str()
		if !ok {
			return nil, false
		}
		key := unquote(raw)
		switch {
		case many != nil:
			if _, dup := many[s.mapKey(key)]; dup {
				return &Duplicate{Key: string(key)}, true
			}
			many[s.mapKey(key)] = struct{}{}
		default:
			for _, k := range keys {
				if bytes.Equal(k, key) || (s.fold && bytes.EqualFold(k, key)) {
					return &Duplicate{Key: string(key)}, true
				}
			}
			if len(keys) < cap(small) {
				keys = append(keys, key)
			} else {
				many = make(map[string]struct{}, 2*len(keys))
				for _, k := range keys {
					many[s.mapKey(k)] = struct{}{}
				}
				many[s.mapKey(key)] = struct{}{}
			}
		}
		s.ws()
		if s.i >= len(s.data) || s.data[s.i] != ':' {
			return nil, false
		}
		s.i++
		if d, ok := s.value(depth + 1); d != nil || !ok {
			if d != nil {
				d.Path = pathKey(string(key)) + d.Path
			}
			return d, ok
		}
		s.ws()
		if s.i >= len(s.data) || (s.data[s.i] != ',' && s.data[s.i] != '}') {
			return nil, false
		}
		if s.data[s.i] == ',' {
			s.i++
		}
	}
}

func (s *scanner) mapKey(k []byte) string {
	if s.fold {
		return string(bytes.ToLower(k))
	}
	return string(k)
}

// str reads a string token and returns it with its quotes.
func (s *scanner) str() ([]byte, bool) {
	if s.i >= len(s.data) || s.data[s.i] != '"' {
		return nil, false
	}
	start := s.i
	s.i++
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case '\\':
			s.i += 2
			continue
		case '"':
			s.i++
			return s.data[start:s.i], true
		}
		s.i++
	}
	return nil, false
}

// unquote returns the key a quoted JSON string names, as encoding/json
// reads it (invalid UTF-8 and lone surrogates become U+FFFD): the bytes of
// data themselves when it has no escapes (no allocation).
func unquote(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if !containsEscapeOrHigh(inner) {
		return inner
	}
	var k string
	if json.Unmarshal(raw, &k) != nil {
		return inner
	}
	return []byte(k)
}

func containsEscapeOrHigh(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= 0x80 {
			return true
		}
	}
	return false
}

func pathKey(k string) string {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return "[" + strconv.Quote(k) + "]"
		}
	}
	if k == "" {
		return `[""]`
	}
	return "." + k
}

// First returns the first top-level value of key in a JSON object, as a
// parser that keeps the first of duplicate keys reads it (the reading
// FindDuplicate guards against; tests use it to play such a backend).
func First(body []byte, key string) (json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return nil, false
		}
		if k == key {
			return v, true
		}
	}
	return nil, false
}
