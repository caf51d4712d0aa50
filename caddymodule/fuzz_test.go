package caddymodule

import (
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// FuzzCaddyfile feeds arbitrary option blocks to the global option and the
// two directives: adapting may fail, but must not panic.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"redis redis://127.0.0.1:6379/0\nadmin_key a b\ncache_ttl 10s",
		"db_path /tmp/x.db\nstore_timeout 50ms",
		"max_body_bytes 100",
		"meter datasets /v1/datasets +1\nmeter datasets * -1\nmeter files 3",
		"tokens off\nusage_header X-U\ndefault_max_tokens 10",
		"redis\n",
		"{\n}",
	} {
		f.Add(seed)
	}
	adapter := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	f.Fuzz(func(t *testing.T, body string) {
		for _, src := range []string{
			"{\n\ttenant_quota {\n" + body + "\n\t}\n}\n:80 {\n\trespond ok\n}\n",
			":80 {\n\ttenant_quota {\n" + body + "\n\t}\n}\n",
			":80 {\n\ttenant_quota_admin {\n" + body + "\n\t}\n}\n",
		} {
			adapter.Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
		}
	})
}
