#!/usr/bin/env bash
# deadcode -test over the module: no function that no program or test
# reaches. It builds SSA for all of Caddy (about 25 s and 40 CPU-seconds
# here) and has no cache of its own, so a clean result is remembered under
# the user's cache directory, keyed by the tool's version, the Go version
# and the content of every Go file, go.mod and go.sum: it runs again only
# when one of them changed, as go vet and staticcheck (which cache) do.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
DEADCODE=${DEADCODE:-golang.org/x/tools/cmd/deadcode@v0.52.0}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/caddy-tenant-quota
key=$({
	echo "$DEADCODE"
	"$GO" version
	find . -name node_modules -prune -o \( -name '*.go' -o -name go.mod -o -name go.sum \) -type f -print | LC_ALL=C sort | xargs sha256sum
} | sha256sum | cut -c1-32)
if [ -e "$dir/deadcode-$key" ]; then
	echo "deadcode: clean (nothing changed since it last ran)"
	exit 0
fi
dead=$("$GO" run "$DEADCODE" -test ./...)
if [ -n "$dead" ]; then
	echo "$dead"
	echo "deadcode: unreachable code (delete it)"
	exit 1
fi
mkdir -p "$dir"
rm -f "$dir"/deadcode-*
touch "$dir/deadcode-$key"
