package quota

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ThresholdMarks remember, per "<resource>|<period>|<percent>", the window
// start (Unix seconds, 0 for lifetime) and the limit of the threshold
// event last fired, so that each fires once per (user, limit, window,
// percent). A reset of the resource forgets its marks.
type ThresholdMarks map[string]string

// Thresholds decides the usage.threshold events of one store step: for
// each limited charge of the step (reservation markers aside), the
// tenant's usage of the counter in its current window — what it has used,
// without what requests in flight reserve — is compared with each
// percentage of the limit, and a threshold reached and not yet marked for
// this window and limit fires. counters are the counters after the step,
// keyed by CounterKey. The events' ids are idBase with a suffix. This is the
// rule the Redis scripts implement too.
func Thresholds(percents []int64, charges []Charge, counters map[string]CounterState, marks ThresholdMarks, userID, idBase string, now time.Time) []Event {
	if len(percents) == 0 {
		return nil
	}
	var out []Event
	for _, c := range charges {
		if c.Limit <= 0 || c.Amount == 0 || strings.HasPrefix(c.Resource, ReservedPrefix) {
			continue
		}
		start, end := c.Per.Window(now)
		cur := counters[CounterKey(c.Resource, c.Per)]
		if !cur.Start.Equal(start) {
			cur.Used = 0
		}
		used := cur.Used - counters[CounterKey(ReservedPrefix+c.Resource, Lifetime)].Used
		for _, p := range percents {
			if used < thresholdOf(c.Limit, p) {
				continue
			}
			field := CounterKey(c.Resource, c.Per) + "|" + strconv.FormatInt(p, 10)
			mark := strconv.FormatInt(windowSeconds(start), 10) + ":" + strconv.FormatInt(c.Limit, 10)
			if marks[field] == mark {
				continue
			}
			marks[field] = mark
			data := ThresholdData{Resource: c.Resource, Period: c.Per.String(), Percent: p, Used: used, Limit: c.Limit}
			if c.Per != Lifetime {
				s, e := start, end
				data.WindowStart, data.WindowEnd = &s, &e
			}
			raw, _ := json.Marshal(data)
			out = append(out, Event{
				ID: idBase + "-t" + strconv.Itoa(len(out)+1), Type: EventUsageThreshold,
				Time: now.UTC().Truncate(time.Second), Subject: userID, Data: raw,
			})
		}
	}
	return out
}

// thresholdOf is ceil(limit × percent / 100); limit ≤ MaxLimit and
// percent ≤ 1000 cannot overflow.
func thresholdOf(limit, percent int64) int64 {
	return (limit*percent + 99) / 100
}

func windowSeconds(start time.Time) int64 {
	if start.IsZero() {
		return 0
	}
	return start.Unix()
}

// ForgetMarks drops the marks of the named resources (all if none).
func (m ThresholdMarks) ForgetMarks(resources []string) {
	for k := range m {
		resource, _, _ := strings.Cut(k, "|")
		if (len(resources) == 0 && !KeptByFullReset(resource)) || slices.Contains(resources, resource) {
			delete(m, k)
		}
	}
}
