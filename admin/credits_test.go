package admin

import (
	"context"
	"net/http"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func TestCredits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u := e.createUser(t, `{"name":"C","email":"c@example.com","credits":10}`)
	path := "/users/" + u.ID + "/credits"

	var got quota.User
	e.call(t, "POST", path, `{"amount":5}`, http.StatusOK).decode(t, &got)
	if got.Credits != 15 {
		t.Fatalf("credits after a top-up of 5: %d", got.Credits)
	}
	for _, bad := range []string{`{"amount":0}`, `{"amount":-3}`, `{}`, `{"amount":"5"}`, `{"amount":5,"x":1}`} {
		problem(t, e.do(t, req{method: "POST", path: path, body: bad}), http.StatusBadRequest, "")
	}
	e.call(t, "POST", "/users/nope/credits", `{"amount":5}`, http.StatusNotFound)
	problem(t, e.do(t, req{method: "POST", path: "/users", body: `{"name":"L","email":"l@example.com","limits":{"credits":5}}`}), http.StatusBadRequest, "limits.credits")

	// Spending shows in usage as a balance.
	full, _ := e.svc.GetUser(context.Background(), u.ID)
	if _, err := e.svc.AdmitUses(context.Background(), full, []quota.Use{{Resource: quota.ResourceCredits, Amount: 4}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AdmitUses(context.Background(), full, []quota.Use{{Resource: quota.ResourceCredits, Amount: 12}}); err == nil {
		t.Fatal("spending more credits than are left was admitted")
	}
	var usage quota.Usage
	e.call(t, "GET", "/users/"+u.ID+"/usage", "", http.StatusOK).decode(t, &usage)
	if usage.Credits != 11 {
		t.Fatalf("balance after spending 4 of 15: %d", usage.Credits)
	}

	// Deactivating zeroes the balance.
	e.call(t, "PATCH", "/users/"+u.ID, `{"status":"disabled"}`, http.StatusOK).decode(t, &got)
	e.call(t, "GET", "/users/"+u.ID+"/usage", "", http.StatusOK).decode(t, &usage)
	if got.Credits != 0 || usage.Credits != 0 {
		t.Fatalf("after deactivation: user credits %d, balance %d", got.Credits, usage.Credits)
	}
}
