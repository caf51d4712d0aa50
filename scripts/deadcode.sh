#!/usr/bin/env bash
# deadcode -test over the module: no function that no program or test
# reaches. It builds SSA for all of Caddy (about 25 s and 40 CPU-seconds
# here) and has no cache of its own, so a clean result is remembered under
# the user's cache directory, keyed by the tool's version, the Go version,
# the build environment and the content of every Go file, go.mod, go.sum
# and this script: it runs again only when one of them changed, as go vet
# and staticcheck (which cache) do.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
GO=${GO:-go}
DEADCODE=${DEADCODE:-golang.org/x/tools/cmd/deadcode@v0.52.0}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/caddy-tenant-quota
key() {
	{
		echo "$DEADCODE"
		"$GO" version
		"$GO" env GOOS GOARCH GOFLAGS CGO_ENABLED GOEXPERIMENT GOWORK
		sha256sum <"$self"
		find . -name node_modules -prune -o \( -name '*.go' -o -name go.mod -o -name go.sum -o -name go.work \) -type f -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-32
}
key=$(key)
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
# Remembered only if nothing changed while it ran.
if [ "$(key)" = "$key" ]; then
	# One entry per state of the sources, the newest 16 kept: two
	# checkouts (a clone beside the main one) keep theirs.
	mkdir -p "$dir"
	touch "$dir/deadcode-$key"
	find "$dir" -maxdepth 1 -name 'deadcode-*' -printf '%T@ %p\n' | sort -rn | tail -n +17 | cut -d' ' -f2- | xargs -r rm -f
fi
