package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Client calls the admin API: the `caddy quota` command and the tests use
// it. Every answer that is not a success comes back as a *ClientError
// carrying the problem's detail and field errors.
type Client struct {
	// URL is the admin API's base, e.g. http://localhost:8080/quota.
	URL string
	// Key is the admin key, sent as Authorization: Bearer <key>.
	Key string
	// HTTP is the client to use; nil means http.DefaultClient.
	HTTP *http.Client
}

// MaxAnswerBytes caps what the client reads of one answer.
const MaxAnswerBytes = 64 << 20

// ClientError is an answer that is not a success.
type ClientError struct {
	Method, Path string
	Status       int
	// StatusText is the answer's status line ("502 Bad Gateway").
	StatusText string
	// Detail and Errors are the problem's (RFC 9457), when the answer is
	// one.
	Detail string
	Errors []FieldError
}

// FieldError is one invalid field of a problem.
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Error is the problem's detail and its fields, one a line, or the status
// when the answer is no problem.
func (e *ClientError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%s %s: %s", e.Method, e.Path, e.StatusText)
	}
	msg := e.Detail
	for _, f := range e.Errors {
		msg += "\n  " + f.Field + ": " + f.Detail
	}
	return msg
}

// Do sends method path (relative to URL, with its query) with body as
// JSON (none when nil) and returns the answer's body.
func (c *Client) Do(ctx context.Context, method, path string, body any) ([]byte, error) {
	if c.Key == "" {
		return nil, errors.New("no admin key: set TQ_ADMIN_KEY or --key")
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.URL, "/")+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.Key)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerBytes))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		ce := &ClientError{Method: method, Path: path, Status: resp.StatusCode, StatusText: resp.Status}
		var p struct {
			Detail string       `json:"detail"`
			Errors []FieldError `json:"errors"`
		}
		if json.Unmarshal(data, &p) == nil {
			ce.Detail, ce.Errors = p.Detail, p.Errors
		}
		return nil, ce
	}
	return data, nil
}

// AllPages gets every page of a list at path (query without a cursor),
// following nextCursor, and returns all of their items.
func (c *Client) AllPages(ctx context.Context, path, query string) ([]json.RawMessage, error) {
	all := []json.RawMessage{}
	cursor := ""
	for {
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		data, err := c.Do(ctx, "GET", path+"?"+q, nil)
		if err != nil {
			return nil, err
		}
		var page struct {
			Items      []json.RawMessage `json:"items"`
			NextCursor string            `json:"nextCursor"`
		}
		if err := json.Unmarshal(data, &page); err != nil {
			return nil, fmt.Errorf("GET %s: %v", path, err)
		}
		all = append(all, page.Items...)
		if page.NextCursor == "" || page.NextCursor == cursor {
			return all, nil
		}
		cursor = page.NextCursor
	}
}

// UserID resolves a user named by id, email (it holds an @) or external
// id; a name that is no email and no external id is taken as an id.
func (c *Client) UserID(ctx context.Context, name string) (string, error) {
	query := "externalId=" + url.QueryEscape(name)
	if strings.Contains(name, "@") {
		query = "email=" + url.QueryEscape(name)
	}
	data, err := c.Do(ctx, "GET", "/users?"+query, nil)
	if err != nil {
		return "", err
	}
	var list struct {
		Items []struct {
			ID string `json:"id"`
		} `json:"items"`
	}
	if json.Unmarshal(data, &list) == nil && len(list.Items) == 1 {
		return list.Items[0].ID, nil
	}
	if strings.Contains(name, "@") {
		return "", fmt.Errorf("no user with email %s", name)
	}
	return url.PathEscape(name), nil
}

// EventPage is one page of GET /events.
type EventPage struct {
	Items      []json.RawMessage `json:"items"`
	NextCursor string            `json:"nextCursor"`
	// Cursor is on every page: poll with it for newer events.
	Cursor string `json:"cursor"`
}

// Events gets one page of the event log written after the cursor after
// ("" from the oldest), filtered by q (type, userId, take).
func (c *Client) Events(ctx context.Context, q url.Values, after string) (*EventPage, error) {
	v := url.Values{}
	for k, vs := range q {
		v[k] = vs
	}
	if after != "" {
		v.Set("after", after)
	}
	data, err := c.Do(ctx, "GET", "/events?"+v.Encode(), nil)
	if err != nil {
		return nil, err
	}
	var page EventPage
	if err := json.Unmarshal(data, &page); err != nil {
		return nil, fmt.Errorf("GET /events: %v", err)
	}
	if page.Cursor == "" {
		return nil, errors.New("GET /events: the answer has no cursor to poll from (a gateway older than this CLI?)")
	}
	return &page, nil
}
