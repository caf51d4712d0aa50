package quota

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Period is the length of a calendar window. The zero value, Lifetime, is a
// cap that holds until the limit is raised or usage is reset.
type Period string

// Periods. Windows are calendar-aligned in UTC: a minute window starts at
// second 0, a day window at midnight UTC, a month window on the 1st.
const (
	Lifetime Period = ""
	Minute   Period = "minute"
	Hour     Period = "hour"
	Day      Period = "day"
	Month    Period = "month"
)

// Valid reports whether p is a known period.
func (p Period) Valid() bool {
	switch p {
	case Lifetime, Minute, Hour, Day, Month:
		return true
	}
	return false
}

// Window returns the start and end of the window of period p that holds t.
// For Lifetime both are the zero time.
func (p Period) Window(t time.Time) (start, end time.Time) {
	t = t.UTC()
	switch p {
	case Minute:
		start = t.Truncate(time.Minute)
		return start, start.Add(time.Minute)
	case Hour:
		start = t.Truncate(time.Hour)
		return start, start.Add(time.Hour)
	case Day:
		start = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	case Month:
		start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	}
	return time.Time{}, time.Time{}
}

// String returns the period's name, "lifetime" for Lifetime.
func (p Period) String() string {
	if p == Lifetime {
		return "lifetime"
	}
	return string(p)
}

// Limit is one limit on one resource: at most Limit units per Per.
type Limit struct {
	Limit int64  `json:"limit"`
	Per   Period `json:"per,omitempty"`
}

// Limits maps a resource name to its limits: at most one per period.
// In JSON a resource's limits are a bare number (a lifetime cap), an object
// {"limit": 60, "per": "minute"}, or a list of either.
type Limits map[string][]Limit

// Well-known resources. Operators may meter any other name that matches
// ResourceNamePattern.
const (
	ResourceTokens        = "tokens"
	ResourceMessages      = "messages"
	ResourceConversations = "conversations"
	ResourceRecords       = "records"
	ResourceDatasets      = "datasets"
	ResourceFiles         = "files"
	ResourceSkillsets     = "skillsets"
	ResourceIntegrations  = "integrations"
	// ResourceCredits counts prepaid credits spent; its cap is the user's
	// granted Credits, not an entry of Limits.
	ResourceCredits = "credits"
)

// ResourceNamePattern is what a resource name must match.
// A resource of a model group adds the group's name after a dot
// ("tokens.premium").
const ResourceNamePattern = `^[a-z][a-z0-9_]{0,63}(\.[a-z0-9_-]{1,64})?$`

var (
	resourceName = regexp.MustCompile(ResourceNamePattern)
	groupName    = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
)

// MaxLimit is the largest limit accepted; it keeps every counter exact in
// the float arithmetic of Redis' Lua.
const MaxLimit = 1 << 50

// ValidResourceName reports whether name may be used as a resource. The
// pattern is also what keeps a resource apart from the stores' own fields:
// a name holds no '|' (the separator of "<resource>|<period>" and of its
// "|s" window start) and no '~' (the Redis usage hash's "~due"), so no
// resource's counter can be read or written as one of them.
func ValidResourceName(name string) bool { return resourceName.MatchString(name) }

// KeptByFullReset reports whether a reset that names no resource (a
// reset of every counter, say a monthly cron) keeps the resource's
// counters: the credits spent, which are a prepaid balance and not a
// usage window; a reset that names the resource resets it.
func KeptByFullReset(resource string) bool { return resource == ResourceCredits }

// InternalResource reports whether name is one of the gateway's own
// counters, which share a user's counters but that no limit may name:
// those under ReservedPrefix ("reserved_tokens", "reserved_slices": what
// in-flight reservations and headroom slices hold, which admission and
// Usage read) and those under the token prefix ("t.": a token's own
// counters, see TokenResource). A limit on one would change what the
// gateway counts for itself: {"reserved_slices": 0} turns a tenant's
// slices off. Limits.Validate refuses them.
func InternalResource(name string) bool {
	return strings.HasPrefix(name, ReservedPrefix) || strings.HasPrefix(name, tokenResourcePrefix)
}

// internalResourceDetail explains why a limit may not name an internal
// resource.
func internalResourceDetail(name string) string {
	if strings.HasPrefix(name, tokenResourcePrefix) {
		return fmt.Sprintf("%q is an internal counter (%s... holds a token's own counters): no limit may name it; give the token limits of its own instead", name, tokenResourcePrefix)
	}
	return fmt.Sprintf("%q is an internal counter (%s... holds what in-flight requests and headroom slices reserve): no limit may name it", name, ReservedPrefix)
}

// UnmarshalJSON decodes the number | object | list forms of every resource.
// A null resource value is kept as a nil entry, which Merge treats as
// "remove this resource's limits".
func (l *Limits) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("limits must be an object of resource names: %w", err)
	}
	if raw == nil {
		*l = nil
		return nil
	}
	out := make(Limits, len(raw))
	var v validator
	for name, msg := range raw {
		field := "limits." + name
		if !ValidResourceName(name) {
			v.add(field, "resource name must match %s", ResourceNamePattern)
			continue
		}
		ls, err := parseResourceLimits(msg)
		if err != nil {
			v.add(field, "%s", err.Error())
			continue
		}
		out[name] = ls
	}
	if err := v.err(); err != nil {
		return err
	}
	*l = out
	return nil
}

func parseResourceLimits(msg json.RawMessage) ([]Limit, error) {
	msg = bytes.TrimSpace(msg)
	if bytes.Equal(msg, []byte("null")) {
		return nil, nil
	}
	if len(msg) > 0 && msg[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(msg, &items); err != nil {
			return nil, fmt.Errorf("malformed list of limits")
		}
		if len(items) == 0 {
			return nil, fmt.Errorf("list of limits is empty; use null to remove a resource's limits")
		}
		out := make([]Limit, 0, len(items))
		for _, it := range items {
			lim, err := parseOneLimit(it)
			if err != nil {
				return nil, err
			}
			out = append(out, lim)
		}
		return out, checkDistinctPeriods(out)
	}
	lim, err := parseOneLimit(msg)
	if err != nil {
		return nil, err
	}
	return []Limit{lim}, nil
}

func parseOneLimit(msg json.RawMessage) (Limit, error) {
	msg = bytes.TrimSpace(msg)
	if len(msg) > 0 && msg[0] == '{' {
		var obj struct {
			Limit *json.RawMessage `json:"limit"`
			Per   *string          `json:"per"`
		}
		dec := json.NewDecoder(bytes.NewReader(msg))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&obj); err != nil {
			return Limit{}, fmt.Errorf(`a limit object takes only "limit" and "per": %v`, err)
		}
		if obj.Limit == nil {
			return Limit{}, fmt.Errorf(`a limit object needs "limit"`)
		}
		n, err := parseLimitNumber(*obj.Limit)
		if err != nil {
			return Limit{}, err
		}
		lim := Limit{Limit: n}
		if obj.Per != nil {
			lim.Per = Period(*obj.Per)
			if *obj.Per == "" || *obj.Per == "lifetime" {
				lim.Per = Lifetime
			} else if !lim.Per.Valid() {
				return Limit{}, fmt.Errorf(`unknown period %q: use "minute", "hour", "day", "month" or omit "per" for a lifetime cap`, *obj.Per)
			}
		}
		return lim, nil
	}
	if len(msg) == 0 || !(msg[0] == '-' || msg[0] >= '0' && msg[0] <= '9') {
		return Limit{}, fmt.Errorf(`a limit is a number, an object {"limit": N, "per": "minute|hour|day|month"}, or a list of them`)
	}
	n, err := parseLimitNumber(msg)
	if err != nil {
		return Limit{}, err
	}
	return Limit{Limit: n}, nil
}

// parseLimitNumber parses a JSON number that must be a whole number.
func parseLimitNumber(raw json.RawMessage) (int64, error) {
	s := string(bytes.TrimSpace(raw))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || strconv.FormatInt(n, 10) != s {
		if len(s) > 32 {
			s = s[:32] + "…"
		}
		return 0, fmt.Errorf("limit must be a whole number, got %s", s)
	}
	if n < 0 {
		return 0, fmt.Errorf("limit must not be negative, got %d", n)
	}
	if n > MaxLimit {
		return 0, fmt.Errorf("limit must be at most %d, got %d", int64(MaxLimit), n)
	}
	return n, nil
}

func checkDistinctPeriods(ls []Limit) error {
	seen := map[Period]bool{}
	for _, l := range ls {
		if seen[l.Per] {
			return fmt.Errorf("two limits for the same period %q", l.Per.String())
		}
		seen[l.Per] = true
	}
	return nil
}

// MarshalJSON writes each resource in its shortest form.
func (l Limits) MarshalJSON() ([]byte, error) {
	if l == nil {
		return []byte("{}"), nil
	}
	names := make([]string, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(n)
		buf.Write(k)
		buf.WriteByte(':')
		ls := l[n]
		switch {
		case ls == nil:
			buf.WriteString("null")
		case len(ls) == 1:
			writeLimit(&buf, ls[0])
		default:
			buf.WriteByte('[')
			for j, one := range ls {
				if j > 0 {
					buf.WriteByte(',')
				}
				writeLimit(&buf, one)
			}
			buf.WriteByte(']')
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func writeLimit(buf *bytes.Buffer, l Limit) {
	if l.Per == Lifetime {
		fmt.Fprintf(buf, "%d", l.Limit)
		return
	}
	fmt.Fprintf(buf, `{"limit":%d,"per":%q}`, l.Limit, string(l.Per))
}

// Validate checks names, values and periods, and refuses a limit on an
// internal resource (see InternalResource); a nil entry, which removes a
// resource's limits, may name one. UnmarshalJSON checks only the shape,
// so that a stored limit from before a rule still reads and can be
// removed; every entry point that sets limits calls Validate.
func (l Limits) Validate() error {
	var v validator
	for name, ls := range l {
		field := "limits." + name
		if !ValidResourceName(name) {
			v.add(field, "resource name must match %s", ResourceNamePattern)
			continue
		}
		if InternalResource(name) && ls != nil {
			v.add(field, "%s", internalResourceDetail(name))
			continue
		}
		for _, one := range ls {
			if one.Limit < 0 || one.Limit > MaxLimit {
				v.add(field, "limit must be between 0 and %d", int64(MaxLimit))
			}
			if !one.Per.Valid() {
				v.add(field, "unknown period %q", string(one.Per))
			}
		}
		if err := checkDistinctPeriods(ls); err != nil {
			v.add(field, "%s", err.Error())
		}
	}
	return v.err()
}

// MaxLimitedResources caps the resources one set of limits names: a user's
// or a token's limits are read on every cache miss, and a merge (PATCH)
// must not grow them without end.
const MaxLimitedResources = 256

// checkGrowth refuses limits that name more than MaxLimitedResources
// resources and more than before (old): limits stored before the cap
// still read, change and shrink.
func checkGrowth(v *validator, old, l Limits) {
	if n := l.count(); n > MaxLimitedResources && n > old.count() {
		v.add("limits", "at most %d resources may be limited, got %d", MaxLimitedResources, n)
	}
}

// count is how many resources l limits (nil entries, which a patch uses to
// remove one, are none).
func (l Limits) count() int {
	n := 0
	for _, ls := range l {
		if ls != nil {
			n++
		}
	}
	return n
}

// Merge returns a copy of l with the resources of patch replaced; a nil
// entry in patch removes that resource's limits.
func (l Limits) Merge(patch Limits) Limits {
	out := l.Clone()
	if out == nil {
		out = Limits{}
	}
	for name, ls := range patch {
		if ls == nil {
			delete(out, name)
			continue
		}
		out[name] = append([]Limit(nil), ls...)
	}
	return out
}

// Clone returns a deep copy of l without nil entries.
func (l Limits) Clone() Limits {
	if l == nil {
		return nil
	}
	out := make(Limits, len(l))
	for name, ls := range l {
		if ls == nil {
			continue
		}
		out[name] = append([]Limit(nil), ls...)
	}
	return out
}
