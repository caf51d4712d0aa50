package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

type createTokenRequest struct {
	Name      string       `json:"name"`
	ExpiresAt *string      `json:"expiresAt"`
	Scopes    []string     `json:"scopes"`
	Limits    quota.Limits `json:"limits"`
}

func (h *Handler) createToken(w http.ResponseWriter, r *http.Request) {
	var req createTokenRequest
	if err := h.decodeBody(w, r, &req, true); err != nil {
		h.writeError(w, r, err)
		return
	}
	in := quota.NewToken{Name: req.Name, Scopes: req.Scopes, Limits: req.Limits}
	if err := h.checkGroups(req.Limits); err != nil {
		h.writeError(w, r, err)
		return
	}
	warnUnknownResources(w, req.Limits)
	if req.ExpiresAt != nil {
		t, err := parseTime("expiresAt", *req.ExpiresAt)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		in.ExpiresAt = &t
	}
	tok, err := h.service().CreateToken(r.Context(), r.PathValue("id"), in)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusCreated, tok)
}

type listTokensResponse struct {
	Items []quota.Token `json:"items"`
}

func (h *Handler) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := h.service().ListTokens(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	resp := listTokensResponse{Items: make([]quota.Token, len(ts))}
	for i, t := range ts {
		// ListTokens already drops hashes; Public again keeps that true
		// whatever the service does.
		resp.Items[i] = t.Public()
	}
	h.writeJSON(w, r, http.StatusOK, resp)
}

func (h *Handler) getToken(w http.ResponseWriter, r *http.Request) {
	t, err := h.service().GetToken(r.Context(), r.PathValue("id"), r.PathValue("tokenId"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, t.Public())
}

type updateTokenRequest struct {
	Name json.RawMessage `json:"name"`
	// ExpiresAt is an RFC 3339 time, or null for no expiry.
	ExpiresAt json.RawMessage `json:"expiresAt"`
	Limits    json.RawMessage `json:"limits"`
	// Scopes are named only to refuse them with a reason.
	Scopes json.RawMessage `json:"scopes"`
}

// updateToken changes a token's name, expiry or limits (merged as in
// PATCH /users/{id}: a null entry removes a resource's limits).
func (h *Handler) updateToken(w http.ResponseWriter, r *http.Request) {
	var req updateTokenRequest
	if err := h.decodeBody(w, r, &req, false); err != nil {
		h.writeError(w, r, err)
		return
	}
	if req.Scopes != nil {
		// Widening a token's reach in place would change what every copy
		// of its secret can do; a new token is a deliberate act.
		h.writeError(w, r, badRequest("scopes", "a token's scopes cannot be changed: create a token with the scopes wanted and revoke this one"))
		return
	}
	var p quota.TokenPatch
	if req.Name != nil {
		if err := json.Unmarshal(req.Name, &p.Name); err != nil || p.Name == nil {
			h.writeError(w, r, quota.Invalid("name", "must be a string; leave it out to keep the name"))
			return
		}
	}
	if req.ExpiresAt != nil {
		var s *string
		if err := json.Unmarshal(req.ExpiresAt, &s); err != nil {
			h.writeError(w, r, quota.Invalid("expiresAt", "must be an RFC 3339 time like 2030-01-02T15:04:05Z, or null for no expiry"))
			return
		}
		exp := time.Time{}
		if s != nil {
			t, err := parseTime("expiresAt", *s)
			if err != nil {
				h.writeError(w, r, err)
				return
			}
			if t.IsZero() {
				h.writeError(w, r, quota.Invalid("expiresAt", "must be in the future; null removes the expiry"))
				return
			}
			exp = t
		}
		p.ExpiresAt = &exp
	}
	if req.Limits != nil {
		l, err := h.limitsField(w, req.Limits)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		p.Limits = l
	}
	t, err := h.service().UpdateToken(r.Context(), r.PathValue("id"), r.PathValue("tokenId"), p)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, t.Public())
}

func (h *Handler) revokeToken(w http.ResponseWriter, r *http.Request) {
	if err := h.service().RevokeToken(r.Context(), r.PathValue("id"), r.PathValue("tokenId")); err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) getLimits(w http.ResponseWriter, r *http.Request) {
	u, err := h.service().GetUser(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u.Limits)
}

func (h *Handler) putLimits(w http.ResponseWriter, r *http.Request) {
	h.changeLimits(w, r, h.service().SetLimits)
}

func (h *Handler) patchLimits(w http.ResponseWriter, r *http.Request) {
	h.changeLimits(w, r, h.service().PatchLimits)
}

// changeLimits decodes a limits object body and applies it with change
// (replace or merge).
func (h *Handler) changeLimits(w http.ResponseWriter, r *http.Request, change func(ctx context.Context, id string, l quota.Limits) (*quota.User, error)) {
	var raw json.RawMessage
	if err := h.decodeBody(w, r, &raw, false); err != nil {
		// The body is the user's limits: a field is named as in a user.
		h.writeError(w, r, underField("limits", err))
		return
	}
	l, err := h.limitsField(w, raw)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	u, err := change(r.Context(), r.PathValue("id"), l)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u.Limits)
}

func (h *Handler) getUsage(w http.ResponseWriter, r *http.Request) {
	by := r.URL.Query().Get("by")
	if by != "" && by != "model" {
		h.writeError(w, r, badRequest("by", `must be "model" (usage by model group), or absent`))
		return
	}
	u, err := h.service().Usage(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	if by == "model" {
		h.writeJSON(w, r, http.StatusOK, byModel(u))
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}

// usageByModel is a user's token usage broken down by model group.
type usageByModel struct {
	UserID string                       `json:"userId"`
	At     time.Time                    `json:"at"`
	Models map[string][]quota.UsageItem `json:"models"`
}

// byModel groups the usage items of model-group resources
// (tokens.premium, ...) by group, under their plain resource names.
func byModel(u *quota.Usage) usageByModel {
	out := usageByModel{UserID: u.UserID, At: u.At, Models: map[string][]quota.UsageItem{}}
	for _, it := range u.Items {
		resource, group, ok := quota.SplitGroupResource(it.Resource)
		if !ok {
			continue
		}
		it.Resource = resource
		out.Models[group] = append(out.Models[group], it)
	}
	return out
}

type resetUsageRequest struct {
	Resources []string `json:"resources"`
}

func (h *Handler) resetUsage(w http.ResponseWriter, r *http.Request) {
	var req resetUsageRequest
	if err := h.decodeBody(w, r, &req, true); err != nil {
		h.writeError(w, r, err)
		return
	}
	// nil (no body, or no "resources") resets everything; an explicit empty
	// list is more likely a mistake than a request to wipe all counters.
	if req.Resources != nil && len(req.Resources) == 0 {
		h.writeError(w, r, quota.Invalid("resources", "must name at least one resource; send no body to reset every counter"))
		return
	}
	u, err := h.service().ResetUsage(r.Context(), r.PathValue("id"), req.Resources)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}

type addCreditsRequest struct {
	Amount *int64 `json:"amount"`
}

// addCredits tops up a user's prepaid credits and answers with the user.
func (h *Handler) addCredits(w http.ResponseWriter, r *http.Request) {
	var req addCreditsRequest
	if err := h.decodeBody(w, r, &req, false); err != nil {
		h.writeError(w, r, err)
		return
	}
	if req.Amount == nil {
		h.writeError(w, r, quota.Invalid("amount", "is required"))
		return
	}
	u, err := h.service().AddCredits(r.Context(), r.PathValue("id"), *req.Amount)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}

// tokenUsage serves GET /users/{id}/tokens/{tokenId}/usage: the token's own
// limits and usage.
func (h *Handler) tokenUsage(w http.ResponseWriter, r *http.Request) {
	u, err := h.service().TokenUsage(r.Context(), r.PathValue("id"), r.PathValue("tokenId"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}
