package admin

import (
	"net/http"
	"net/url"
	"strconv"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// eventPage is the body of GET /events. Cursor is on every page: polled
// with after=<cursor> later, the log lists only newer events; NextCursor,
// the same, only while more events are there to fetch at once.
type eventPage struct {
	Items      []quota.CloudEvent `json:"items"`
	NextCursor string             `json:"nextCursor,omitempty"`
	Cursor     string             `json:"cursor"`
}

// listEvents serves GET /events?after=&type=&userId=&take=: the outbox,
// oldest first, as CloudEvents, after a cursor of an earlier page.
func (h *Handler) listEvents(w http.ResponseWriter, r *http.Request) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.writeError(w, r, badRequest("", "the query string is malformed: "+err.Error()))
		return
	}
	query := quota.EventQuery{Take: DefaultPageSize}
	for name, vals := range q {
		if len(vals) != 1 {
			h.writeError(w, r, badRequest(name, "must be given once"))
			return
		}
		switch v := vals[0]; name {
		case "after":
			query.After = v
		case "type":
			query.TypePrefix = v
		case "userId":
			query.UserID = v
		case "take":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > quota.MaxPageSize {
				h.writeError(w, r, badRequest("take", "must be a whole number between 1 and "+strconv.Itoa(quota.MaxPageSize)))
				return
			}
			query.Take = n
		default:
			h.writeError(w, r, badRequest(name, "unknown query parameter; accepted: after, type, userId, take"))
			return
		}
	}
	events, err := h.service().ListEvents(r.Context(), query)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	page := eventPage{Items: make([]quota.CloudEvent, len(events.Events)), Cursor: events.Cursor}
	if events.More {
		page.NextCursor = events.Cursor
	}
	for i, e := range events.Events {
		page.Items[i] = e.CloudEvent(h.source)
	}
	h.writeJSON(w, r, http.StatusOK, page)
}
