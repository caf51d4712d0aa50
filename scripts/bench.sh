#!/usr/bin/env bash
# make bench: throughput of bare Caddy `respond` against the same route
# behind tenant_quota, on the embedded store and on Redis, measured in one
# run with wrk and printed as ratios (absolute figures drift on shared
# machines; ratios from one run do not).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/caddy}
DURATION=${BENCH_DURATION:-5s}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
ROUNDS=${BENCH_ROUNDS:-5}
KEY=bench-admin-key

need() {
	command -v "$1" >/dev/null 2>&1 && return
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "installing $2 (apt-get)"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
	else
		echo "make bench needs $1: apt-get install $2" >&2
		exit 1
	fi
}
need wrk wrk
need redis-server redis-server
need redis-cli redis-tools
need curl curl

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

freeport() {
	local p
	while :; do
		p=$((20000 + RANDOM % 12000)) # below the ephemeral range (32768-)
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}
waitport() {
	for _ in $(seq 1 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
		sleep 0.1
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	return 1
}

rport=$(freeport)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
waitport "$rport"

# gateway NAME STORE_OPTION: starts Caddy with a bare route and a metered
# route, and sets BARE and QUOTA to their ports. It runs in this shell (not
# a subshell), so the EXIT trap knows its pid.
gateway() {
	local name=$1 store=$2 bare quota admin upstream
	bare=$(freeport); quota=$(freeport); admin=$(freeport); upstream=$(freeport)
	BARE=$bare QUOTA=$quota
	cat >"$work/$name.caddyfile" <<CADDY
{
	admin 127.0.0.1:$admin
	tenant_quota {
		$store
		admin_key $KEY
	}
}
# The bare site has the quota site's routes, less the plugin.
http://127.0.0.1:$bare {
	bind 127.0.0.1
	handle_path /quota/* {
		respond 404
	}
	handle /proxy/* {
		reverse_proxy 127.0.0.1:$upstream
	}
	handle {
		respond "ok"
	}
}
http://127.0.0.1:$upstream {
	bind 127.0.0.1
	respond "ok"
}
http://127.0.0.1:$quota {
	bind 127.0.0.1
	handle_path /quota/* {
		tenant_quota_admin
	}
	handle /proxy/* {
		tenant_quota
		reverse_proxy 127.0.0.1:$upstream
	}
	handle {
		tenant_quota
		respond "ok"
	}
}
CADDY
	XDG_DATA_HOME="$work/$name-data" "$BIN" run --config "$work/$name.caddyfile" --adapter caddyfile >"$work/$name.log" 2>&1 &
	pids+=($!)
	waitport "$quota" || { tail -5 "$work/$name.log" >&2; exit 1; }
}

# token PORT: creates a tenant with high limits (a lifetime cap and a
# per-minute window, so admission checks two counters) and prints its token.
token() {
	curl -fsS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
		-d '{"name":"bench","email":"bench-'"$1"'@example.com","issueToken":true,"limits":{"messages":[1000000000000,{"limit":1000000000000,"per":"minute"}]}}' \
		"http://127.0.0.1:$1/quota/users" | sed -n 's/.*"token":{[^}]*"token":"\(tq_[A-Za-z0-9]*\)".*/\1/p'
}

# runwrk WRK_ARGS...: runs wrk into $work/wrk.out, fails on any non-2xx.
runwrk() {
	wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$@" >"$work/wrk.out"
	grep -q 'Non-2xx' "$work/wrk.out" && { cat "$work/wrk.out" >&2; echo "non-2xx responses during the benchmark" >&2; exit 1; }
	return 0
}

rps() { # URL [TOKEN [COUNT_FILE]]: prints requests/s, adds the requests made to COUNT_FILE
	local args=(--latency)
	[ -n "${2:-}" ] && args+=(-H "Authorization: Bearer $2")
	runwrk "${args[@]}" "$1"
	[ -n "${3:-}" ] && awk '/requests in/ {print $1}' "$work/wrk.out" >>"$3"
	awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}

gateway embedded ""
bare1=$BARE quota1=$QUOTA
gateway redis "redis redis://127.0.0.1:$rport/0"
bare2=$BARE quota2=$QUOTA
tok1=$(token "$quota1")
tok2=$(token "$quota2")
[ -n "$tok1" ] && [ -n "$tok2" ] || { echo "could not create the benchmark tenants" >&2; exit 1; }

echo "wrk -t$THREADS -c$CONNS -d$DURATION, loopback, $ROUNDS interleaved rounds (median)"
redis-cli -p "$rport" CONFIG RESETSTAT >/dev/null
keys_before=$(redis-cli -p "$rport" DBSIZE)
: >"$work/rounds"
for round in $(seq 1 "$ROUNDS"); do
	# The bare routes get the same requests, token included (they ignore it).
	b=$(rps "http://127.0.0.1:$bare1/v1/chat" "$tok1")
	e=$(rps "http://127.0.0.1:$quota1/v1/chat" "$tok1")
	bp=$(rps "http://127.0.0.1:$bare1/proxy/x" "$tok1")
	ep=$(rps "http://127.0.0.1:$quota1/proxy/x" "$tok1")
	b2=$(rps "http://127.0.0.1:$bare2/v1/chat" "$tok2")
	r=$(rps "http://127.0.0.1:$quota2/v1/chat" "$tok2" "$work/redis-requests")
	echo "$b $e $bp $ep $b2 $r" >>"$work/rounds"
done
keys_after=$(redis-cli -p "$rport" DBSIZE)
# Redis server time of the scripts (which include the commands they call;
# the gateway sends no other command per request), and the requests the
# Redis gateway admitted.
stats=$(redis-cli -p "$rport" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {calls += $3; usec += $5} END {print calls + 0, usec + 0}')
admitted=$(awk '{n += $1} END {print n + 0}' "$work/redis-requests")
awk -v stats="$stats" -v kb="$keys_before" -v ka="$keys_after" -v admitted="$admitted" '
function median(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t } return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
{ n++; re[n] = $2 / $1; rp[n] = $4 / $3; rr[n] = $6 / $5; bare[n] = $1 }
END {
	split(stats, s, " ")
	printf "%-40s %8s\n", "route (ratio to the same route bare)", "median"
	printf "%-40s %8.2f\n", "respond, embedded store", median(re, n)
	printf "%-40s %8.2f\n", "respond, redis store", median(rr, n)
	printf "%-40s %8.2f\n", "reverse_proxy, embedded store", median(rp, n)
	if (admitted > 0) {
		printf "%-40s %8.4f\n", "redis scripts per admitted request", s[1] / admitted
		printf "%-40s %8.2f us\n", "redis server time per admitted request", s[2] / admitted
		printf "%-40s %8.2f\n", "redis keys left per 1,000 requests", (ka - kb) * 1000 / admitted
	}
}' "$work/rounds"

# Many tenants, each sending little: every request of each goes to the
# store (a tenant takes headroom slices only above about 80 requests a
# second on a node). The same rotation of tokens goes to the bare routes.
TENANTS=${BENCH_TENANTS:-500}
[ "$TENANTS" -gt 0 ] || exit 0
many() { # PORT: creates TENANTS tenants and writes a wrk script rotating their tokens
	local i
	{
		echo "local tokens = {"
		for i in $(seq 1 "$TENANTS"); do
			curl -fsS -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
				-d '{"name":"t","email":"t'"$i"'-'"$1"'@example.com","issueToken":true,"limits":{"messages":[1000000000000,{"limit":1000000000000,"per":"minute"}]}}' \
				"http://127.0.0.1:$1/quota/users" | sed -n 's/.*"token":{[^}]*"token":"\(tq_[A-Za-z0-9]*\)".*/  "\1",/p'
		done
		echo "}"
		echo 'local i = 0'
		echo 'request = function() i = i % #tokens + 1; return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]}) end'
	} >"$work/many-$1.lua"
}
mrps() { # URL SCRIPT: prints requests/s
	runwrk -s "$2" "$1"
	awk '/Requests\/sec/ {print $2}' "$work/wrk.out"
}
many "$quota1"
many "$quota2"
: >"$work/many-rounds"
for round in $(seq 1 "$ROUNDS"); do
	b=$(mrps "http://127.0.0.1:$bare1/v1/chat" "$work/many-$quota1.lua")
	e=$(mrps "http://127.0.0.1:$quota1/v1/chat" "$work/many-$quota1.lua")
	b2=$(mrps "http://127.0.0.1:$bare2/v1/chat" "$work/many-$quota2.lua")
	r=$(mrps "http://127.0.0.1:$quota2/v1/chat" "$work/many-$quota2.lua")
	echo "$b $e $b2 $r" >>"$work/many-rounds"
done
awk -v t="$TENANTS" '
function median(a, n,   i, j, x) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x } return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
{ n++; re[n] = $2 / $1; rr[n] = $4 / $3 }
END {
	printf "%-40s %8.2f\n", "respond, embedded, " t " tenants in turn", median(re, n)
	printf "%-40s %8.2f\n", "respond, redis, " t " tenants in turn", median(rr, n)
}' "$work/many-rounds"
