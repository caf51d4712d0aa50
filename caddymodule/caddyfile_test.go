package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files in testdata")

// TestAdaptGolden adapts every testdata/*.caddyfile and compares the JSON
// with the golden testdata/*.json next to it.
func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden Caddyfiles: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
			out, warnings, err := adapter.Adapt(src, map[string]any{"filename": file})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			if len(warnings) > 0 {
				t.Fatalf("adapt warnings: %v", warnings)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, out, "", "\t"); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			golden := strings.TrimSuffix(file, ".caddyfile") + ".json"
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./caddymodule -run TestAdaptGolden -update)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Fatalf("adapted JSON differs from %s:\n%s", golden, pretty.String())
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown global option", "{\n\ttenant_quota {\n\t\tfoo bar\n\t}\n}\n:80 {\n\trespond ok\n}", `unrecognized tenant_quota option "foo"`},
		{"redis without url", "{\n\ttenant_quota {\n\t\tredis\n\t}\n}\n:80 {\n\trespond ok\n}", "redis needs a URL"},
		{"admin_key without key", "{\n\ttenant_quota {\n\t\tadmin_key\n\t}\n}\n:80 {\n\trespond ok\n}", "admin_key needs at least one key"},
		{"bad duration", "{\n\ttenant_quota {\n\t\tcache_ttl soon\n\t}\n}\n:80 {\n\trespond ok\n}", `cache_ttl: "soon" is not a positive duration`},
		{"negative duration", "{\n\ttenant_quota {\n\t\tstore_timeout -1s\n\t}\n}\n:80 {\n\trespond ok\n}", "store_timeout"},
		{"global args", "{\n\ttenant_quota x\n}\n:80 {\n\trespond ok\n}", "wrong argument count"},
		{"bad policy", "{\n\ttenant_quota {\n\t\ton_store_error maybe\n\t}\n}\n:80 {\n\trespond ok\n}", "on_store_error takes deny, allow"},
		{"bad allowance", "{\n\ttenant_quota {\n\t\ton_store_error allow lots per minute\n\t}\n}\n:80 {\n\trespond ok\n}", `"lots" is not a positive number`},
		{"bad slices", "{\n\ttenant_quota {\n\t\tslices maybe\n\t}\n}\n:80 {\n\trespond ok\n}", "slices takes on or off"},
		{"bad allowance period", "{\n\ttenant_quota {\n\t\ton_store_error allow 5 per week\n\t}\n}\n:80 {\n\trespond ok\n}", `period must be minute, hour or day, got "week"`},
		{"handler subdirective", ":80 {\n\ttenant_quota {\n\t\tnope\n\t}\n}", `unrecognized tenant_quota subdirective "nope"`},
		{"tokens value", ":80 {\n\ttenant_quota {\n\t\ttokens maybe\n\t}\n}", `tokens takes on, off or a matcher, got "maybe"`},
		{"max tokens value", ":80 {\n\ttenant_quota {\n\t\tdefault_max_tokens -5\n\t}\n}", `default_max_tokens: "-5" is not a positive whole number`},
		{"usage header missing", ":80 {\n\ttenant_quota {\n\t\tusage_header\n\t}\n}", "usage_header needs a value"},
		{"meter without resource", ":80 {\n\ttenant_quota {\n\t\tmeter\n\t}\n}", "meter needs a resource"},
		{"meter bad resource", ":80 {\n\ttenant_quota {\n\t\tmeter Data /x\n\t}\n}", `resource "Data" must match`},
		{"meter unknown matcher", ":80 {\n\ttenant_quota {\n\t\tmeter datasets @nope +1\n\t}\n}", "unrecognized matcher name: @nope"},
		{"meter bad amount", ":80 {\n\ttenant_quota {\n\t\tmeter datasets /x +0\n\t}\n}", `"+0" is not an amount`},
		{"meter extra args", ":80 {\n\ttenant_quota {\n\t\tmeter datasets /x 1 2\n\t}\n}", `unexpected "2"`},
		{"meter key without placeholder", ":80 {\n\ttenant_quota {\n\t\tmeter conversations /x key\n\t}\n}", "key needs a placeholder"},
		{"credits syntax", ":80 {\n\ttenant_quota {\n\t\tcredits tokens\n\t}\n}", "credits takes <resource> <n> [per <units>]"},
		{"credits amount", ":80 {\n\ttenant_quota {\n\t\tcredits tokens x per 10\n\t}\n}", `"x" is not a positive whole number`},
		{"reservation ttl", ":80 {\n\ttenant_quota {\n\t\treservation_ttl forever\n\t}\n}", `reservation_ttl: "forever" is not a positive duration`},
		{"events webhook without secret", "{\n\ttenant_quota {\n\t\tevents {\n\t\t\twebhook https://h.example.com\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "needs a secret"},
		{"events unknown option", "{\n\ttenant_quota {\n\t\tevents {\n\t\t\tnope\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", `unrecognized events option "nope"`},
		{"events threshold", "{\n\ttenant_quota {\n\t\tevents {\n\t\t\tthresholds 0\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "not a percentage"},
		{"kafka without topic", "{\n\ttenant_quota {\n\t\tevents {\n\t\t\tkafka b:9092\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "kafka needs a topic"},
		{"kafka sasl", "{\n\ttenant_quota {\n\t\tevents {\n\t\t\tkafka b:9092 {\n\t\t\t\ttopic t\n\t\t\t\tsasl gssapi u p\n\t\t\t}\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "sasl mechanism must be"},
		{"named admin key with two keys", "{\n\ttenant_quota {\n\t\tadmin_key a b {\n\t\t\tname x\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "takes one key"},
		{"model group without patterns", "{\n\ttenant_quota {\n\t\tmodel_group premium\n\t}\n}\n:80 {\n\trespond ok\n}", "model_group takes a name and model patterns"},
		{"model group twice", "{\n\ttenant_quota {\n\t\tmodel_group p a\n\t\tmodel_group p b\n\t}\n}\n:80 {\n\trespond ok\n}", "defined twice"},
		{"model group name", "{\n\ttenant_quota {\n\t\tmodel_group Pre.mium a\n\t}\n}\n:80 {\n\trespond ok\n}", "a name is 1 to 64"},
		{"unmatched models", "{\n\ttenant_quota {\n\t\tunmatched_models maybe\n\t}\n}\n:80 {\n\trespond ok\n}", "unmatched_models takes allow or refuse"},
		{"role without permissions", "{\n\ttenant_quota {\n\t\trole Editor\n\t}\n}\n:80 {\n\trespond ok\n}", "role takes a name and its permissions"},
		{"role bad permission", "{\n\ttenant_quota {\n\t\trole Editor a..b\n\t}\n}\n:80 {\n\trespond ok\n}", "role Editor"},
		{"role twice", "{\n\ttenant_quota {\n\t\trole E a\n\t\trole E b\n\t}\n}\n:80 {\n\trespond ok\n}", "defined twice"},
		{"require syntax", ":80 {\n\ttenant_quota {\n\t\trequire a for b\n\t}\n}", "require takes <permission> [on <resource>]"},
		{"require pattern", ":80 {\n\ttenant_quota {\n\t\trequire a.*\n\t}\n}", "require:"},
		{"admin key permissions without name", "{\n\ttenant_quota {\n\t\tadmin_key k {\n\t\t\tpermissions users.read\n\t\t}\n\t}\n}\n:80 {\n\trespond ok\n}", "needs a name"},
		{"reserve value", ":80 {\n\ttenant_quota {\n\t\treserve loose\n\t}\n}", `reserve takes strict or estimate, got "loose"`},
		{"part tokens kind", ":80 {\n\ttenant_quota {\n\t\tpart_tokens video 10\n\t}\n}", `part_tokens: kind must be image, audio or file, got "video"`},
		{"part tokens amount", ":80 {\n\ttenant_quota {\n\t\tpart_tokens image 0\n\t}\n}", `part_tokens image: "0" is not a whole number`},
		{"part tokens arity", ":80 {\n\ttenant_quota {\n\t\tpart_tokens image\n\t}\n}", "part_tokens takes <image|audio|file> <n>"},
		{"max tokens field", ":80 {\n\ttenant_quota {\n\t\tmax_tokens_field max_output\n\t}\n}", `max_tokens_field takes max_tokens or max_completion_tokens, got "max_output"`},
		{"tokens unknown matcher", ":80 {\n\ttenant_quota {\n\t\ttokens @nope\n\t}\n}", "unrecognized matcher name: @nope"},
		{"handler args", ":80 {\n\ttenant_quota /a b\n}", "wrong argument count"},
		{"admin body size", ":80 {\n\ttenant_quota_admin {\n\t\tmax_body_bytes lots\n\t}\n}", `max_body_bytes: "lots"`},
		{"admin subdirective", ":80 {\n\ttenant_quota_admin {\n\t\tkey x\n\t}\n}", `unrecognized tenant_quota_admin subdirective "key"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
			_, _, err := adapter.Adapt([]byte(tt.src), map[string]any{"filename": "Caddyfile"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestHandlerValidate: settings the Caddyfile cannot catch while adapting.
func TestHandlerValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		h    Handler
		want string
	}{
		{"response key on a delete", Handler{Meters: []Meter{{Resource: "files", Mode: MeterDelete, Amount: 1, Key: "{http.quota.response.body.id}"}}}, "counts created objects"},
		{"reserve", Handler{Reserve: "loose"}, "reserve must be strict or estimate"},
		{"part kind", Handler{PartTokens: map[string]int64{"video": 5}}, "kind must be image, audio or file"},
		{"part amount", Handler{PartTokens: map[string]int64{"image": -5}}, "part_tokens image must be between 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.h.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestAdminKeyRulesInValidate: the Caddyfile parser checks an admin_key
// block's syntax, and Validate its meaning with admin.ValidateKey (the
// rule the admin handler applies too): a permission that does not exist
// or a bad name is refused by caddy validate, whether the config came
// from a Caddyfile or from JSON.
func TestAdminKeyRulesInValidate(t *testing.T) {
	for _, k := range []NamedAdminKey{
		{Key: "k", Name: "support", Permissions: []string{"users.raed"}},
		{Key: "k", Name: "two words", Permissions: []string{"users.read"}},
		{Key: "k", Name: strings.Repeat("n", 65)},
	} {
		a := &App{NamedAdminKeys: []NamedAdminKey{k}, OnStoreError: StoreErrorDeny}
		err := a.Validate()
		if err == nil || !strings.Contains(err.Error(), "admin key") {
			t.Fatalf("%+v: %v", k, err)
		}
	}
	ok := &App{NamedAdminKeys: []NamedAdminKey{{Key: "k", Name: "support", Permissions: []string{"users.read", "tokens.*"}}}, OnStoreError: StoreErrorDeny}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}
