package redisstore

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// BenchmarkAdmitRedis measures admissions that reach Redis (the ones no
// headroom slice serves): a plain one, and an LLM-like one that holds a
// reservation and is settled. It reports Redis' own time per request
// (INFO commandstats) besides the round trip.
func BenchmarkAdmitRedis(b *testing.B) {
	srv := redistest.Start(b)
	s, err := New(Options{Client: srv.Client(b), Timeout: redistest.Timeout})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rdb := srv.Client(b)
	ctx := context.Background()
	plain := []quota.Charge{
		{Resource: "messages", Limit: quota.MaxLimit, Amount: 1},
		{Resource: "messages", Per: quota.Minute, Limit: quota.MaxLimit, Amount: 1},
	}
	held := append(plain,
		quota.Charge{Resource: "tokens", Limit: quota.MaxLimit, Amount: 4096, Hold: 10 * time.Minute},
		quota.Charge{Resource: "reserved_tokens", Limit: quota.NoLimit, Amount: 4096, Hold: 10 * time.Minute})
	// A request made with a token also counts the token's lifetime use.
	withToken := append(append([]quota.Charge(nil), plain...),
		quota.Charge{Resource: quota.TokenResource(quota.NewID(), "messages"), Limit: quota.NoLimit, Amount: 1})
	actual := []quota.Charge{{Resource: "tokens", Limit: quota.NoLimit, Amount: 300}}
	for _, bc := range []struct {
		name    string
		charges []quota.Charge
		settle  bool
	}{{"plain", plain, false}, {"plain+token", withToken, false}, {"held+settle", held, true}} {
		b.Run(bc.name, func(b *testing.B) {
			id := quota.NewID()
			charges := bc.charges
			rdb.ConfigResetStat(ctx)
			for b.Loop() {
				rid := quota.NewID()
				if _, err := s.Admit(ctx, id, rid, charges); err != nil {
					b.Fatal(err)
				}
				if bc.settle {
					if err := s.Settle(ctx, id, rid, actual); err != nil {
						b.Fatal(err)
					}
				}
			}
			info := rdb.Info(ctx, "commandstats").Val()
			b.ReportMetric(redisMicros(b, info)/float64(b.N), "redis-µs/req")
			if testing.Verbose() {
				b.Log(info)
			}
		})
	}
}

// redisMicros sums the usec of the scripts in INFO commandstats (the
// commands they call are counted in them, and again on their own lines).
func redisMicros(b *testing.B, info string) float64 {
	var total float64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatal(err)
				}
				total += n
			}
		}
	}
	return total
}
