package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// DefaultPageSize is the page size of GET /users without take.
const DefaultPageSize = 50

type createUserRequest struct {
	Name           string          `json:"name"`
	Email          string          `json:"email"`
	ExternalID     string          `json:"externalId"`
	Limits         json.RawMessage `json:"limits"`
	Credits        int64           `json:"credits"`
	Status         quota.Status    `json:"status"`
	IssueToken     bool            `json:"issueToken"`
	TokenName      *string         `json:"tokenName"`
	TokenExpiresAt *string         `json:"tokenExpiresAt"`
}

type createUserResponse struct {
	User  *quota.User        `json:"user"`
	Token *quota.IssuedToken `json:"token,omitempty"`
}

func (h *Handler) createUser(w http.ResponseWriter, r *http.Request) {
	var req createUserRequest
	if err := h.decodeBody(w, r, &req, false); err != nil {
		h.writeError(w, r, err)
		return
	}
	in := quota.NewUser{Name: req.Name, Email: req.Email, ExternalID: req.ExternalID, Credits: req.Credits, Status: req.Status}
	if req.Limits != nil && string(req.Limits) != "null" {
		l, err := parseLimits(req.Limits)
		if err == nil {
			err = h.checkGroups(l)
		}
		warnUnknownResources(w, l)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		in.Limits = l
	}
	tok := quota.NewToken{}
	if req.IssueToken {
		if req.TokenName != nil {
			tok.Name = *req.TokenName
		}
		if req.TokenExpiresAt != nil {
			t, err := parseTime("tokenExpiresAt", *req.TokenExpiresAt)
			if err != nil {
				h.writeError(w, r, err)
				return
			}
			tok.ExpiresAt = &t
		}
	} else if req.TokenName != nil || req.TokenExpiresAt != nil {
		field := "tokenName"
		if req.TokenName == nil {
			field = "tokenExpiresAt"
		}
		h.writeError(w, r, quota.Invalid(field, `is only accepted with "issueToken": true`))
		return
	}

	u, err := h.service().CreateUser(r.Context(), in)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	resp := createUserResponse{User: u}
	if req.IssueToken {
		resp.Token, err = h.service().CreateToken(r.Context(), u.ID, tok)
		if err != nil {
			// Undo the user, so that retrying the same request succeeds.
			h.undoCreateUser(r.Context(), u.ID)
			h.writeError(w, r, renameFields(err, map[string]string{"name": "tokenName", "expiresAt": "tokenExpiresAt"}))
			return
		}
	}
	w.Header().Set("Location", "users/"+url.PathEscape(u.ID))
	h.writeJSON(w, r, http.StatusCreated, resp)
}

func (h *Handler) undoCreateUser(ctx context.Context, id string) {
	if err := h.service().DeleteUser(context.WithoutCancel(ctx), id); err != nil {
		h.log.Error("deleting a user whose token could not be issued", zap.String("user_id", id), zap.Error(err))
	}
}

// renameFields returns err with the fields of a validation error renamed
// (the token fields of POST /users carry a prefix).
func renameFields(err error, names map[string]string) error {
	ve, ok := errors.AsType[*quota.ValidationError](err)
	if !ok {
		return err
	}
	out := &quota.ValidationError{Fields: make([]quota.FieldError, len(ve.Fields))}
	for i, f := range ve.Fields {
		if n, ok := names[f.Field]; ok {
			f.Field = n
		}
		out.Fields[i] = f
	}
	return out
}

type listUsersResponse struct {
	Items      []*quota.User `json:"items"`
	NextCursor string        `json:"nextCursor,omitempty"`
}

func (h *Handler) listUsers(w http.ResponseWriter, r *http.Request) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.writeError(w, r, badRequest("", "the query string is malformed: "+err.Error()))
		return
	}
	params := map[string]string{}
	for name, vals := range q {
		switch name {
		case "take", "cursor", "email", "externalId":
		default:
			h.writeError(w, r, badRequest(name, "unknown query parameter; accepted: take, cursor, email, externalId"))
			return
		}
		if len(vals) != 1 {
			h.writeError(w, r, badRequest(name, "must be given once"))
			return
		}
		params[name] = vals[0]
	}

	take := DefaultPageSize
	if s, ok := params["take"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > quota.MaxPageSize {
			h.writeError(w, r, badRequest("take", "must be a whole number between 1 and "+strconv.Itoa(quota.MaxPageSize)))
			return
		}
		take = n
	}
	email, byEmail := params["email"]
	ext, byExt := params["externalId"]
	cursor, hasCursor := params["cursor"]

	if byEmail || byExt {
		if hasCursor {
			h.writeError(w, r, badRequest("cursor", "cannot be combined with email or externalId"))
			return
		}
		h.lookupUser(w, r, email, byEmail, ext, byExt)
		return
	}

	var after string
	if hasCursor {
		id, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(id) == 0 {
			h.writeError(w, r, badRequest("cursor", "is not a cursor this API returned"))
			return
		}
		after = string(id)
	}
	users, next, err := h.service().ListUsers(r.Context(), after, take)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	resp := listUsersResponse{Items: users}
	if resp.Items == nil {
		resp.Items = []*quota.User{}
	}
	if next != "" {
		resp.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	h.writeJSON(w, r, http.StatusOK, resp)
}

// lookupUser answers GET /users?email=…&externalId=… with the one user that
// matches every given key, or no items.
func (h *Handler) lookupUser(w http.ResponseWriter, r *http.Request, email string, byEmail bool, ext string, byExt bool) {
	// A '+' sent unencoded arrives as a space; no address holds one.
	email = strings.ReplaceAll(email, " ", "+")
	if byEmail && email == "" {
		h.writeError(w, r, badRequest("email", "must not be empty"))
		return
	}
	if byExt && ext == "" {
		h.writeError(w, r, badRequest("externalId", "must not be empty"))
		return
	}
	var (
		u   *quota.User
		err error
	)
	if byEmail {
		u, err = h.service().GetUserByEmail(r.Context(), email)
	} else {
		u, err = h.service().GetUserByExternalID(r.Context(), ext)
	}
	resp := listUsersResponse{Items: []*quota.User{}}
	switch {
	case errors.Is(err, quota.ErrNotFound):
	case err != nil:
		h.writeError(w, r, err)
		return
	case !byExt || u.ExternalID == ext:
		resp.Items = append(resp.Items, u)
	}
	h.writeJSON(w, r, http.StatusOK, resp)
}

func (h *Handler) getUser(w http.ResponseWriter, r *http.Request) {
	u, err := h.service().GetUser(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}

type updateUserRequest struct {
	Name       *string         `json:"name"`
	Email      *string         `json:"email"`
	ExternalID *string         `json:"externalId"`
	Limits     json.RawMessage `json:"limits"`
	Status     *quota.Status   `json:"status"`
}

func (h *Handler) updateUser(w http.ResponseWriter, r *http.Request) {
	var req updateUserRequest
	if err := h.decodeBody(w, r, &req, false); err != nil {
		h.writeError(w, r, err)
		return
	}
	p := quota.UserPatch{Name: req.Name, Email: req.Email, ExternalID: req.ExternalID, Status: req.Status}
	if req.Limits != nil {
		l, err := h.limitsField(w, req.Limits)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		p.Limits = l
	}
	u, err := h.service().UpdateUser(r.Context(), r.PathValue("id"), p)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusOK, u)
}

func (h *Handler) deleteUser(w http.ResponseWriter, r *http.Request) {
	if err := h.service().DeleteUser(r.Context(), r.PathValue("id")); err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// parseTime parses an RFC 3339 time of field.
func parseTime(field, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, quota.Invalid(field, "must be an RFC 3339 time like 2030-01-02T15:04:05Z, got %q", s)
	}
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		// 9999-12-31T23:00:00-01:00 is in year 10000 in UTC, which no
		// RFC 3339 time (and so no stored token or event) can hold.
		return time.Time{}, quota.Invalid(field, "must be in the years 1 to 9999 in UTC, got %q", s)
	}
	return t, nil
}
