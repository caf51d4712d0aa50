package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/tenantquota/caddy-tenant-quota/admin"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "quota",
		Usage: "<users|tokens|limits|usage|credits|events|migrate> ...",
		Short: "Manages tenant_quota users, tokens, limits and usage",
		Long: `
Talks to the tenant_quota admin API: --url (default $TQ_URL, else
http://localhost:8080/quota) and --key (default $TQ_ADMIN_KEY). Users are
named by id, email or externalId. Output is a table; --json prints the API's
JSON for scripts. On error the exit status is 1 and the problem's detail is
printed.

"caddy quota migrate" copies the stores themselves, not through the API.`,
		CobraFunc: quotaCommand,
	})
}

// cli holds the flags shared by the API subcommands.
type cli struct {
	url, key string
	json     bool
	out      io.Writer
}

func quotaCommand(cmd *cobra.Command) {
	c := &cli{out: cmd.OutOrStdout()}
	def := os.Getenv("TQ_URL")
	if def == "" {
		def = "http://localhost:8080/quota"
	}
	cmd.PersistentFlags().StringVar(&c.url, "url", def, "the admin API's URL ($TQ_URL)")
	cmd.PersistentFlags().StringVar(&c.key, "key", os.Getenv("TQ_ADMIN_KEY"), "the admin key ($TQ_ADMIN_KEY)")
	cmd.PersistentFlags().BoolVar(&c.json, "json", false, "print JSON")

	users := &cobra.Command{Use: "users", Short: "List, get, create, update, disable, enable or delete users"}
	users.AddCommand(
		c.run("list", "List every user (all pages), then how many", cobra.NoArgs, func(args []string, f map[string]string) error {
			r, n := c.allPages("/users", "take=1000")
			if err := c.show(r, "items", "id", "email", "name", "status", "externalId", "credits"); err != nil {
				return err
			}
			if !c.json {
				fmt.Fprintf(c.out, "%d users\n", n)
			}
			return nil
		}),
		c.run("get <user>", "Show a user", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("GET", "/users/"+id, nil), "", "id", "email", "name", "status", "externalId", "credits", "limits")
		}),
		c.run("create", "Create a user (--name, --email, --external-id, --limits JSON, --credits, --token)", cobra.NoArgs, func(args []string, f map[string]string) error {
			body := map[string]any{"name": f["name"], "email": f["email"]}
			if err := c.userFields(body, f); err != nil {
				return err
			}
			if f["token"] == "true" {
				body["issueToken"] = true
			}
			return c.show(c.do("POST", "/users", body), "user", "id", "email", "name", "status")
		}, "name", "email", "external-id", "limits", "credits", "token"),
		c.run("update <user>", "Update a user (--name, --email, --external-id, --limits JSON)", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			body := map[string]any{}
			if f["name"] != "" {
				body["name"] = f["name"]
			}
			if f["email"] != "" {
				body["email"] = f["email"]
			}
			if err := c.userFields(body, f); err != nil {
				return err
			}
			return c.show(c.do("PATCH", "/users/"+id, body), "", "id", "email", "name", "status")
		}, "name", "email", "external-id", "limits"),
		c.status("disable", "disabled"), c.status("enable", "active"),
		c.run("delete <user>", "Delete a user, its tokens and counters", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("DELETE", "/users/"+id, nil), "")
		}),
	)

	tokens := &cobra.Command{Use: "tokens", Short: "Create, list, get, update or revoke a user's tokens"}
	tokens.AddCommand(
		c.run("create <user>", "Create a token (--name, --expires RFC 3339, --scopes a,b); the secret is shown once", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			body := map[string]any{"name": f["name"]}
			if f["expires"] != "" {
				body["expiresAt"] = f["expires"]
			}
			if f["scopes"] != "" {
				body["scopes"] = strings.Split(f["scopes"], ",")
			}
			return c.show(c.do("POST", "/users/"+id+"/tokens", body), "", "id", "name", "token", "expiresAt")
		}, "name", "expires", "scopes"),
		c.run("list <user>", "List a user's tokens", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("GET", "/users/"+id+"/tokens", nil), "items", "id", "name", "prefix", "createdAt", "lastUsedAt", "expiresAt")
		}),
		c.run("get <user> <token id>", "Show a token (never its secret)", cobra.ExactArgs(2), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("GET", "/users/"+id+"/tokens/"+url.PathEscape(args[1]), nil), "", "id", "name", "prefix", "scopes", "limits", "createdAt", "lastUsedAt", "expiresAt")
		}),
		c.run("update <user> <token id>", "Change a token (--name, --expires RFC 3339 or never, --limits JSON merged)", cobra.ExactArgs(2), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			body := map[string]any{}
			if f["name"] != "" {
				body["name"] = f["name"]
			}
			switch f["expires"] {
			case "":
			case "never":
				body["expiresAt"] = nil
			default:
				body["expiresAt"] = f["expires"]
			}
			if f["limits"] != "" {
				var l json.RawMessage
				if err := json.Unmarshal([]byte(f["limits"]), &l); err != nil {
					return fmt.Errorf("--limits must be JSON: %v", err)
				}
				body["limits"] = l
			}
			if len(body) == 0 {
				return fmt.Errorf("nothing to change: give --name, --expires or --limits")
			}
			return c.show(c.do("PATCH", "/users/"+id+"/tokens/"+url.PathEscape(args[1]), body), "", "id", "name", "limits", "expiresAt")
		}, "name", "expires", "limits"),
		c.run("revoke <user> <token id>", "Revoke a token", cobra.ExactArgs(2), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("DELETE", "/users/"+id+"/tokens/"+url.PathEscape(args[1]), nil), "")
		}),
	)

	limits := &cobra.Command{Use: "limits", Short: "Get, set (replace) or patch (merge) a user's limits"}
	limits.AddCommand(
		c.run("get <user>", "Show a user's limits", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
			id, err := c.userID(args[0])
			if err != nil {
				return err
			}
			return c.show(c.do("GET", "/users/"+id+"/limits", nil), "")
		}),
		c.limitsChange("set", "PUT"), c.limitsChange("patch", "PATCH"),
	)

	usage := c.run("usage <user>", "Show a user's usage", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
		id, err := c.userID(args[0])
		if err != nil {
			return err
		}
		return c.show(c.do("GET", "/users/"+id+"/usage", nil), "items", "resource", "per", "used", "reserved", "limit", "remaining", "resetsAt")
	})
	usage.Use = "usage <user> | usage reset <user> [<resource>...]"
	usage.Args = cobra.MinimumNArgs(1)
	usage.AddCommand(c.run("reset <user> [<resource>...]", "Reset a user's counters (all but the credits spent, or the named resources)", cobra.MinimumNArgs(1), func(args []string, f map[string]string) error {
		id, err := c.userID(args[0])
		if err != nil {
			return err
		}
		var body any // none: every counter
		if len(args) > 1 {
			body = map[string]any{"resources": args[1:]}
		}
		return c.show(c.do("POST", "/users/"+id+"/usage/reset", body), "items", "resource", "per", "used", "limit")
	}))

	credits := &cobra.Command{Use: "credits", Short: "Top up a user's prepaid credits"}
	credits.AddCommand(c.run("add <user> <amount>", "Add credits", cobra.ExactArgs(2), func(args []string, f map[string]string) error {
		id, err := c.userID(args[0])
		if err != nil {
			return err
		}
		var n int64
		if _, err := fmt.Sscan(args[1], &n); err != nil {
			return fmt.Errorf("amount %q is not a whole number", args[1])
		}
		return c.show(c.do("POST", "/users/"+id+"/credits", map[string]any{"amount": n}), "", "id", "email", "credits")
	}))

	eventsCmd := &cobra.Command{Use: "events", Short: "Read the event log"}
	eventsCmd.AddCommand(c.run("tail", "Print events as they are written (--type prefix, --user, --follow)", cobra.NoArgs, func(args []string, f map[string]string) error {
		return c.tail(f)
	}, "type", "user", "follow"))

	cmd.AddCommand(users, tokens, limits, usage, credits, eventsCmd, migrateCommand())
}

// run makes a subcommand whose named flags arrive as strings.
func (c *cli) run(use, short string, args cobra.PositionalArgs, fn func(args []string, flags map[string]string) error, flags ...string) *cobra.Command {
	vals := make(map[string]*string, len(flags))
	cmd := &cobra.Command{Use: use, Short: short, Args: args, SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			f := map[string]string{}
			for k, v := range vals {
				f[k] = *v
			}
			return fn(args, f)
		},
	}
	for _, name := range flags {
		vals[name] = cmd.Flags().String(name, "", "")
		if name == "token" || name == "follow" {
			cmd.Flags().Lookup(name).NoOptDefVal = "true"
		}
	}
	return cmd
}

func (c *cli) status(verb, status string) *cobra.Command {
	return c.run(verb+" <user>", strings.ToUpper(verb[:1])+verb[1:]+" a user", cobra.ExactArgs(1), func(args []string, f map[string]string) error {
		id, err := c.userID(args[0])
		if err != nil {
			return err
		}
		return c.show(c.do("PATCH", "/users/"+id, map[string]any{"status": status}), "", "id", "email", "status")
	})
}

func (c *cli) limitsChange(verb, method string) *cobra.Command {
	return c.run(verb+" <user> <limits JSON>", strings.ToUpper(verb[:1])+verb[1:]+` a user's limits, e.g. '{"tokens": 100000}'`, cobra.ExactArgs(2), func(args []string, f map[string]string) error {
		id, err := c.userID(args[0])
		if err != nil {
			return err
		}
		var l json.RawMessage
		if err := json.Unmarshal([]byte(args[1]), &l); err != nil {
			return fmt.Errorf("limits must be JSON: %v", err)
		}
		return c.show(c.do(method, "/users/"+id+"/limits", l), "")
	})
}

func (c *cli) userFields(body map[string]any, f map[string]string) error {
	if f["external-id"] != "" {
		body["externalId"] = f["external-id"]
	}
	if f["limits"] != "" {
		var l json.RawMessage
		if err := json.Unmarshal([]byte(f["limits"]), &l); err != nil {
			return fmt.Errorf("--limits must be JSON: %v", err)
		}
		body["limits"] = l
	}
	if f["credits"] != "" {
		var n int64
		if _, err := fmt.Sscan(f["credits"], &n); err != nil {
			return fmt.Errorf("--credits %q is not a whole number", f["credits"])
		}
		body["credits"] = n
	}
	return nil
}

// response is an admin API answer.
type response struct {
	body []byte
	err  error
}

// do calls the admin API; a problem answer becomes an error with its
// detail and field errors.
func (c *cli) do(method, path string, body any) response {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data, err := c.client().Do(ctx, method, path, body)
	return response{body: data, err: err}
}

// client is the admin API's client; each call (a page of a list too) has
// 30 seconds.
func (c *cli) client() *admin.Client {
	return &admin.Client{URL: c.url, Key: c.key, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// allPages gets every page of a list (following nextCursor) as one
// answer whose items are all of them, and how many there are.
func (c *cli) allPages(path, query string) (response, int) {
	all, err := c.client().AllPages(context.Background(), path, query)
	if err != nil {
		return response{err: err}, 0
	}
	body, err := json.Marshal(map[string]any{"items": all})
	return response{body: body, err: err}, len(all)
}

// userID resolves a user named by id, email or external id.
func (c *cli) userID(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.client().UserID(ctx, name)
}

// show prints an answer: its JSON with --json, else a table of the columns
// of the object (or of the list under field).
func (c *cli) show(r response, field string, cols ...string) error {
	if r.err != nil {
		return r.err
	}
	if c.json || len(cols) == 0 {
		if len(bytes.TrimSpace(r.body)) == 0 {
			if !c.json {
				fmt.Fprintln(c.out, "done")
			}
			return nil
		}
		var buf bytes.Buffer
		if json.Indent(&buf, r.body, "", "  ") != nil {
			buf.Write(r.body)
		}
		fmt.Fprintln(c.out, buf.String())
		return nil
	}
	var doc map[string]any
	if err := json.Unmarshal(r.body, &doc); err != nil {
		return err
	}
	var rows []map[string]any
	if field == "" {
		rows = []map[string]any{doc}
	} else if list, ok := doc[field].([]any); ok {
		for _, it := range list {
			if m, ok := it.(map[string]any); ok {
				rows = append(rows, m)
			}
		}
	} else if m, ok := doc[field].(map[string]any); ok {
		rows = []map[string]any{m}
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
	for _, row := range rows {
		vals := make([]string, len(cols))
		for i, col := range cols {
			vals[i] = cell(row[col])
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	if tok, ok := doc["token"].(map[string]any); ok && field == "user" {
		fmt.Fprintf(tw, "\ntoken (shown once):\t%s\n", cell(tok["token"]))
	}
	return tw.Flush()
}

func cell(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		return v
	case float64:
		return fmt.Sprintf("%.0f", v)
	case map[string]any, []any:
		b, _ := json.Marshal(v)
		return string(b)
	}
	return fmt.Sprint(v)
}

// tail prints events oldest first, and with --follow keeps polling from
// the cursor of the last page, so that each event is printed once.
func (c *cli) tail(f map[string]string) error {
	q := url.Values{"take": {"1000"}}
	if f["type"] != "" {
		q.Set("type", f["type"])
	}
	if f["user"] != "" {
		id, err := c.userID(f["user"])
		if err != nil {
			return err
		}
		q.Set("userId", id)
	}
	after := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		page, err := c.client().Events(ctx, q, after)
		cancel()
		if err != nil {
			return err
		}
		for _, e := range page.Items {
			if c.json {
				fmt.Fprintln(c.out, string(e))
				continue
			}
			var ev struct {
				Time    time.Time `json:"time"`
				Type    string    `json:"type"`
				Subject string    `json:"subject"`
				Actor   string    `json:"actor"`
			}
			_ = json.Unmarshal(e, &ev)
			fmt.Fprintf(c.out, "%s  %-16s %s  %s\n", ev.Time.Format(time.RFC3339), ev.Type, ev.Subject, ev.Actor)
		}
		after = page.Cursor
		if page.NextCursor != "" {
			continue
		}
		if f["follow"] != "true" {
			return nil
		}
		time.Sleep(time.Second)
	}
}

// migrateCommand is caddy quota migrate: a store-to-store copy.
func migrateCommand() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "migrate --from <embedded db file | redis URL> --to <redis URL | embedded db file>",
		Short: "Copy users, token hashes, limits, credits, roles and counters between stores",
		Long: `Copies everything a tenant needs from one store to another, so that a
gateway that started on the embedded store can move to Redis (standalone,
Sentinel or Cluster) without re-issuing a single token, and back for a
rollback. Stop the gateways first (the embedded file is locked while one
runs). It is idempotent: run it again after an interruption.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("--to is required")
			}
			src, err := openStore(from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			defer src.Close()
			dst, err := openStore(to)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			defer dst.Close()
			sum, err := quota.Migrate(context.Background(), src, dst, func(s quota.MigrateSummary) {
				fmt.Fprintf(cmd.ErrOrStderr(), "\r%d users…", s.Users+s.UsersPresent)
			})
			fmt.Fprintln(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), sum)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", filepath.Join(caddy.AppDataDir(), "tenant_quota", "quota.db"), "the source store")
	cmd.Flags().StringVar(&to, "to", "", "the destination store")
	return cmd
}

// openStore opens a store named by a Redis URL (or host:port list) or an
// embedded database file.
func openStore(where string) (quota.Store, error) {
	if strings.Contains(where, "://") || (!strings.ContainsAny(where, "/\\") && strings.Contains(where, ":")) {
		opts, err := redisstore.ParseURL(where)
		if err != nil {
			return nil, err
		}
		client := redis.NewUniversalClient(opts)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := client.Ping(ctx).Err(); err != nil {
			client.Close()
			return nil, fmt.Errorf("redis does not answer: %w", err)
		}
		return redisstore.New(redisstore.Options{Client: client})
	}
	if _, err := os.Stat(where); err != nil && !strings.HasSuffix(where, ".db") {
		return nil, err
	}
	return boltstore.Open(boltstore.Options{Path: where})
}
