package quota

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

// ReservePolicy says how a request's token reservation is sized.
type ReservePolicy string

// Reserve policies.
const (
	// ReserveStrict reserves an upper bound of what the request can use:
	// its prompt text in bytes (no tokenizer makes more tokens than
	// bytes), a few tokens per message, a bound per image, audio or file
	// part, and its output maximum. For a backend that honours the output
	// maximum it is sent, no tenant's tokens go over a cap.
	ReserveStrict ReservePolicy = "strict"
	// ReserveEstimate reserves the prompt's bytes / 4 and its output
	// maximum: one request may overshoot a cap by as much as its prompt
	// exceeds that estimate.
	ReserveEstimate ReservePolicy = "estimate"
)

// Defaults of a Route.
const (
	DefaultMaxTokens   = 4096
	DefaultImageTokens = 4096
	DefaultAudioTokens = 16384
	DefaultFileTokens  = 65536
	// DefaultHold is how long a reservation is held if its request never
	// settles (its node crashed).
	DefaultHold = 10 * time.Minute
	// MessageTokens is what a strict bound adds per message (and once
	// per request) for the template tokens that frame it.
	MessageTokens = 8
)

// Route is a route's metering configuration: what its requests are
// charged besides what their meters count. The zero value takes the
// defaults; it is not changed by a plan.
type Route struct {
	Reserve          ReservePolicy
	DefaultMaxTokens int64
	// ImageTokens, AudioTokens and FileTokens bound one binary content
	// part of a strict reservation.
	ImageTokens, AudioTokens, FileTokens int64
	// Credits price resources in prepaid credits.
	Credits []CreditRate
	// Hold is how long a reservation is held if the request never settles.
	Hold time.Duration
	// ModelGroups put a request's model in a group whose resources
	// (tokens.<group>, ...) count besides the plain ones.
	ModelGroups ModelGroups
	// UnmatchedModels is UnmatchedAllow or UnmatchedRefuse: whether an
	// LLM request whose model is in no group (or that names none) is
	// served. The default refuses once any group is defined.
	UnmatchedModels string
	// ChatOutputField, if set, is the field the maximum is written under
	// in Chat Completions (and unknown-API) requests instead of
	// max_tokens: max_completion_tokens for OpenAI's reasoning models,
	// which refuse max_tokens.
	ChatOutputField string

	prepared bool // filled in by Prepared
}

// Prepared returns the route with its defaults filled in, for a caller
// to keep: planning on it copies nothing.
func (r Route) Prepared() *Route {
	c := r.withDefaults()
	c.prepared = true
	return &c
}

func (r Route) withDefaults() Route {
	c := r
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Reserve == "" {
		c.Reserve = ReserveStrict
	}
	def(&c.DefaultMaxTokens, DefaultMaxTokens)
	def(&c.ImageTokens, DefaultImageTokens)
	def(&c.AudioTokens, DefaultAudioTokens)
	def(&c.FileTokens, DefaultFileTokens)
	if c.Hold <= 0 {
		c.Hold = DefaultHold
	}
	return c
}

// API is the kind of LLM call a route serves, by the end of its path.
type API int

// APIs.
const (
	APINone        API = iota // not an LLM call: no tokens are metered
	APIChat                   // .../chat/completions
	APICompletions            // .../completions
	APIResponses              // .../responses
	APIMessages               // .../messages (Anthropic)
	APIEmbeddings             // .../embeddings
	APIOther                  // an operator-selected LLM route of unknown shape
)

// outputField is where a request of the API says its output maximum.
func (a API) outputField() string {
	switch a {
	case APIChat, APICompletions, APIMessages, APIOther:
		return llmusage.FieldMaxTokens
	case APIResponses:
		return llmusage.FieldMaxOutputTokens
	}
	return ""
}

// OutputFields are the body fields in which a request of the API sets its
// output maximum (empty for embeddings, which have no output). A route of
// unknown shape is read as Chat Completions.
func (a API) OutputFields() []string {
	switch a {
	case APIChat, APIOther:
		return chatOutputFields
	case APICompletions, APIMessages:
		return maxTokensOnly
	case APIResponses:
		return maxOutputOnly
	}
	return noOutputFields
}

var (
	chatOutputFields = []string{llmusage.FieldMaxTokens, llmusage.FieldMaxCompletionTokens}
	maxTokensOnly    = []string{llmusage.FieldMaxTokens}
	maxOutputOnly    = []string{llmusage.FieldMaxOutputTokens}
	noOutputFields   = []string{}
)

// TokenRequest is what an LLM request's body says, for its plan.
type TokenRequest struct {
	API API
	// Body is the parsed body; Body.Object is false for a body that is
	// not a JSON object or was too large to read (Size says how large).
	Body llmusage.Request
	Size int64
}

// MeterUses are what a request's meters count: Admit at admission,
// OnSuccess or OnFailure after a 2xx or any other response, and Created
// after a 2xx, keyed by what the response names (held at admission).
type MeterUses struct {
	Admit, OnSuccess, OnFailure []Use
	Created                     []Use
}

// Plan is one request's metering: what its admission counts and holds, and
// how its response settles. Build it with Route.Plan; it is not safe for
// concurrent use.
type Plan struct {
	route  *Route // prepared
	final  []Use
	meters MeterUses
	tokens *tokenPlan
	buf    [2]Use // final's first storage: a plain request allocates only its Plan
	// ticket is the storage of the first ticket admitted from a slice
	// under this plan (one allocation less per request).
	ticket     Ticket
	ticketUsed bool
}

type tokenPlan struct {
	api       API
	prompt    int64    // the input reserved
	estimate  int64    // the input charged when the backend reports nothing
	output    int64    // the output reserved per choice (the maximum)
	choices   int64    // completions generated, each up to output
	clientMax bool     // the client set its own maximum
	maxFields []string // where
	opaque    bool     // the body could not be read: charge an estimate whatever the status
	model     string
	group     string // the model's group, "" for none
}

// planPool recycles the plans of requests that ended without a settlement
// (see Release): one allocation less per plain request.
var planPool = sync.Pool{New: func() any { return new(Plan) }}

// Release gives back the plan of a request that has ended and will never
// be settled (Settles is false), once its ticket's work is done: neither
// the plan nor a ticket admitted under it may be used afterwards. A plan
// not released is left to the garbage collector.
func (p *Plan) Release() {
	if p != nil && !p.Settles() {
		planPool.Put(p)
	}
}

// Plan builds the plan of one request: every request counts one message,
// the meters count what they count, and an LLM request (tr.API !=
// APINone) reserves its tokens. Amounts are clamped to MaxLimit.
func (r *Route) Plan(meters MeterUses, tr TokenRequest) *Plan {
	if !r.prepared {
		r = r.Prepared()
	}
	p := planPool.Get().(*Plan)
	*p = Plan{route: r, meters: meters}
	p.buf[0] = Use{Resource: ResourceMessages, Amount: 1}
	p.final = append(p.buf[:1], meters.Admit...)
	if tr.API == APINone {
		return p
	}
	t := &tokenPlan{api: tr.API, choices: max(tr.Body.Choices, 1), model: tr.Body.Model}
	t.group = p.route.ModelGroups.GroupOf(t.model)
	b := tr.Body
	switch {
	case !b.Object:
		// Unreadable: every byte may be a token; the backend is told no
		// maximum, so the default is all that is reserved for output.
		t.opaque = true
		t.prompt = clampAmount(tr.Size)
		t.estimate = max(ceilDiv(tr.Size, llmusage.BytesPerToken), 1)
		t.output = p.route.DefaultMaxTokens
	default:
		t.estimate = ceilDiv(b.EstimateBytes, llmusage.BytesPerToken)
		t.prompt = t.estimate
		if p.route.Reserve == ReserveStrict {
			t.prompt = satAdd(satAdd(b.BoundBytes, satMul(satAdd(b.Messages, 1), MessageTokens)),
				satAdd(satAdd(satMul(b.Images, p.route.ImageTokens), satMul(b.Audio, p.route.AudioTokens)), satMul(b.Files, p.route.FileTokens)))
		}
		t.clientMax, t.maxFields = b.HasMax, b.MaxFields
		switch {
		case b.HasMax:
			t.output = clampAmount(b.MaxOutput)
		case tr.API == APIEmbeddings:
		default:
			t.output = p.route.DefaultMaxTokens
		}
	}
	p.tokens = t
	return p
}

// ceilDiv is ceil(a / b) for a >= 0, b > 0.
func ceilDiv(a, b int64) int64 { return a/b + min(a%b, 1) }

// Model returns the request's model and its group ("" for none).
func (p *Plan) Model() (model, group string) {
	if p.tokens == nil {
		return "", ""
	}
	return p.tokens.model, p.tokens.group
}

// MetersTokens reports whether the request is an LLM call whose tokens are
// metered.
func (p *Plan) MetersTokens() bool { return p.tokens != nil }

// OutputMax returns the output maximum the gateway must write into the
// request body, under field: set when the client named none and the
// body can carry one (not for embeddings or an unreadable body), or when a
// chat request named it only in the chat field the route does not write
// (max_completion_tokens where the route writes max_tokens, or back): the
// caller then removes the other field.
func (p *Plan) OutputMax() (field string, n int64, ok bool) {
	t := p.tokens
	if t == nil || t.opaque || t.output == 0 {
		return "", 0, false
	}
	field = t.api.outputField()
	chat := t.api == APIChat || t.api == APIOther
	if p.route.ChatOutputField != "" && chat {
		field = p.route.ChatOutputField
	}
	if t.clientMax && !(chat && !slices.Contains(t.maxFields, field)) {
		return "", 0, false
	}
	// A chat request that named its maximum in the other chat field gets
	// it in the route's own: a backend that honours only that one (many
	// read only max_tokens) would not be bounded otherwise. The caller
	// drops the other field (OpenAI refuses both).
	return field, t.output, true
}

// Uses returns what the admission charges: the final uses, and the held
// uses that the settlement replaces (the token reservation, created
// objects named by the response, and their price in credits).
func (p *Plan) Uses() []Use {
	held := p.heldUses()
	if len(held) == 0 {
		return p.final
	}
	out := make([]Use, 0, len(p.final)+len(held))
	out = append(out, p.final...)
	return append(out, Held(held, p.route.Hold)...)
}

func (p *Plan) heldUses() []Use {
	var held []Use
	if t := p.tokens; t != nil {
		c := TokenCount{Input: t.prompt, Output: satMul(t.output, t.choices)}
		if c != (TokenCount{}) {
			held = c.UsesFor(t.group)
			for _, u := range held {
				u.Resource = ReservedPrefix + u.Resource
				held = append(held, u)
			}
		}
	}
	held = append(held, p.meters.Created...)
	if cost := CreditCost(p.route.Credits, p.final, held); cost > 0 {
		// The marker shows what is reserved, and keeps it out of usage
		// thresholds.
		held = append(held, Use{Resource: ResourceCredits, Amount: cost}, Use{Resource: ReservedPrefix + ResourceCredits, Amount: cost})
	}
	return held
}

// Holds reports whether the admission holds anything to release.
func (p *Plan) Holds() bool { return len(p.heldUses()) > 0 }

// Settles reports whether the request must be settled after its response.
func (p *Plan) Settles() bool {
	return p.tokens != nil || len(p.meters.OnSuccess)+len(p.meters.OnFailure)+len(p.meters.Created) > 0 || p.Holds()
}

// need is how much of resource the admission charges.
func (p *Plan) need(resource string) int64 {
	var n int64
	for _, u := range p.Uses() {
		if u.Resource == resource && u.Key == "" {
			n = satAdd(n, u.Amount)
		}
	}
	return n
}

// fit lowers the reserved output of a request that set no maximum so that
// its charge of resource is at most remaining; it reports false when no
// output of at least one token fits, or the output does not change the
// charge.
func (p *Plan) fit(resource string, remaining int64) bool {
	t := p.tokens
	if t == nil || t.clientMax || t.opaque || t.output <= 1 {
		return false
	}
	orig := t.output
	t.output = 1
	if p.need(resource) > remaining {
		t.output = orig
		return false
	}
	lo, hi := int64(1), orig-1 // lo fits; find the largest that does
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		t.output = mid
		if p.need(resource) <= remaining {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	t.output = lo
	return true
}

// Outcome is what a served request's response tells its settlement.
type Outcome struct {
	// Status is the response status (0 if none was written).
	Status int
	// Reported is the usage the backend reported, if Found.
	Reported llmusage.Usage
	// BytesOut is how many response body bytes reached the client.
	BytesOut int64
	// ClientGone is true when the client hung up before the end.
	ClientGone bool
	// CreatedKeys are the keys of MeterUses.Created, in order, as the
	// response named them ("" when it did not).
	CreatedKeys []string
}

// Tokens returns the tokens the request used: what the backend reported
// (clamped, a bare total counted as output), else, for a client that hung
// up, a backend that said nothing about a successful response or a body
// the gateway could not read, the estimate: the prompt estimate plus one
// token per four bytes sent, the output at most what was reserved. A
// backend error without usage costs nothing.
func (p *Plan) Tokens(o Outcome) TokenCount {
	t := p.tokens
	if t == nil {
		return TokenCount{}
	}
	u := o.Reported
	sent := min(ceilDiv(max(o.BytesOut, 0), llmusage.BytesPerToken), satMul(t.output, t.choices))
	if u.Found {
		c := TokenCount{Input: clampAmount(u.InputTokens), Output: clampAmount(u.OutputTokens)}
		if u.InputTokens == 0 && u.OutputTokens == 0 {
			c = TokenCount{Output: clampAmount(u.Total())}
		}
		if o.ClientGone {
			// The report may be partial (a stream cut short).
			c.Input = max(c.Input, t.estimate)
			c.Output = max(c.Output, sent)
		}
		return c
	}
	if o.Status >= 400 && !o.ClientGone && !t.opaque {
		return TokenCount{}
	}
	return TokenCount{Input: min(t.estimate, max(t.prompt, 1)), Output: sent}
}

// Settlement returns what the request actually used, which replaces what
// its admission held: tokens, the objects its meters created or released,
// and their price in credits.
func (p *Plan) Settlement(o Outcome) []Use {
	var actual []Use
	if p.tokens != nil {
		actual = p.Tokens(o).UsesFor(p.tokens.group)
	}
	ok := o.Status >= 200 && o.Status < 300
	if ok {
		for i, c := range p.meters.Created {
			if i < len(o.CreatedKeys) && len(o.CreatedKeys[i]) <= MaxKeyLength {
				c.Key = o.CreatedKeys[i]
			}
			actual = append(actual, c)
		}
		actual = append(actual, p.meters.OnSuccess...)
	} else {
		actual = append(actual, p.meters.OnFailure...)
	}
	if cost := CreditCost(p.route.Credits, p.final, actual); cost > 0 {
		actual = append(actual, Use{Resource: ResourceCredits, Amount: cost})
	}
	return actual
}

// minNeed is how much of resource the request needs at the least: with
// its own maximum, or with one output token if the gateway sets it.
func (p *Plan) minNeed(resource string) int64 {
	t := p.tokens
	if t == nil || t.clientMax || t.opaque || t.output <= 1 {
		return p.need(resource)
	}
	orig := t.output
	t.output = 1
	defer func() { t.output = orig }()
	return p.need(resource)
}

// advice says what the client can change to fit.
func (p *Plan) advice() string {
	if p.tokens != nil && p.tokens.clientMax {
		return "lower max_tokens or shorten the prompt"
	}
	return "shorten the prompt"
}

// describe says what the request asked for, in terms its client can act
// on, when resource is one its tokens count against.
func (p *Plan) describe(resource string) string {
	t := p.tokens
	if t == nil || (resource != ResourceTokens && resource != ResourceInputTokens && resource != ResourceOutputTokens && resource != ResourceCredits) {
		return ""
	}
	max := "max_tokens " + strconv.FormatInt(t.output, 10)
	if !t.clientMax {
		max = "at least 1 output token"
	}
	if t.choices > 1 {
		max += " for each of " + strconv.FormatInt(t.choices, 10) + " choices"
	}
	return fmt.Sprintf("a prompt of up to %d tokens and %s", t.prompt, max)
}
