package admin

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the admin API's OpenAPI 3.1 document (admin/openapi.json,
// made by scripts/openapi.py). The admin tests validate every request and
// response they make against it, so it cannot drift from the code.
//
//go:embed openapi.json
var OpenAPI []byte

// serveOpenAPI answers GET /openapi.json, which needs no key.
func serveOpenAPI(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(OpenAPI)
}
