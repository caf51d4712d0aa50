package quota

import (
	"encoding/json"
	"hash/crc32"
	"testing"
)

func FuzzParseTokenSecret(f *testing.F) {
	s, _ := NewTokenSecret()
	f.Add(s)
	f.Add("tq_")
	f.Add("")
	f.Fuzz(func(t *testing.T, secret string) {
		hash, ok := ParseTokenSecret(secret)
		if ok && (len(secret) != TokenLength || hash != HashTokenSecret(secret)) {
			t.Fatalf("accepted %q", secret)
		}
	})
}

func FuzzLimitsJSON(f *testing.F) {
	for _, seed := range []string{`{"messages": 100}`, `{"tokens": [1, {"limit": 2, "per": "day"}]}`, `{"a": null}`, `{"x": {"limit": -1}}`, `[]`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var l Limits
		if err := json.Unmarshal([]byte(in), &l); err != nil {
			return
		}
		if err := l.Clone().Validate(); err != nil {
			t.Fatalf("decoded limits %s fail validation: %v", in, err)
		}
		out, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		var again Limits
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		out2, _ := json.Marshal(again)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed %s to %s", out, out2)
		}
	})
}

// FuzzChecksum: the token checksum's hand-rolled CRC is crc32.ChecksumIEEE.
func FuzzChecksum(f *testing.F) {
	f.Add("")
	f.Add("0123456789abcdefABCDEF")
	f.Fuzz(func(t *testing.T, s string) {
		n := crc32.ChecksumIEEE([]byte(s))
		var want [tokenChecksumLen]byte
		for i := tokenChecksumLen - 1; i >= 0; i-- {
			want[i] = base62[n%62]
			n /= 62
		}
		if got := checksumOf(s); got != want {
			t.Fatalf("checksumOf(%q) = %q, want %q", s, got, want)
		}
	})
}
