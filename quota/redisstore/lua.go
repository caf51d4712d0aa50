package redisstore

import (
	"embed"
	"strings"
)

// Every script lives in lua/*.lua: the shared preludes (window.lua,
// charges.lua, outbox.lua, thresholds.lua) that scripts are prefixed with,
// and the scripts themselves, each documenting its KEYS and ARGV (its Go
// variable carries the same comment).
//
//go:embed lua/*.lua
var luaFiles embed.FS

func lua(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name)
	if err != nil {
		panic("redisstore: missing script " + name) // a build error, caught by every test
	}
	return "\n" + strings.TrimRight(string(b), "\n") + "\n"
}

var (
	luaWindowStart = lua("window.lua")
	luaOutbox      = lua("outbox.lua")
	luaCharges     = luaWindowStart + lua("charges.lua")
	luaThresholds  = luaOutbox + lua("thresholds.lua")
)
