// Command caddy is Caddy with its standard modules and the tenant-quota
// plugin: the same program `xcaddy build --with
// github.com/tenantquota/caddy-tenant-quota` produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/tenantquota/caddy-tenant-quota"
)

func main() {
	caddycmd.Main()
}
