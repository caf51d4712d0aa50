package admin

import (
	"net/http"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

type grantRequest struct {
	Role     string `json:"role"`
	Resource string `json:"resource"`
}

type grantsResponse struct {
	Items []quota.RoleGrant `json:"items"`
}

// grantRole serves POST /users/{id}/roles {"role", "resource"}.
func (h *Handler) grantRole(w http.ResponseWriter, r *http.Request) {
	var req grantRequest
	if err := h.decodeBody(w, r, &req, false); err != nil {
		h.writeError(w, r, err)
		return
	}
	g, err := h.service().GrantRole(r.Context(), r.PathValue("id"), h.roles, req.Role, req.Resource)
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	h.writeJSON(w, r, http.StatusCreated, g)
}

// listRoles serves GET /users/{id}/roles.
func (h *Handler) listRoles(w http.ResponseWriter, r *http.Request) {
	u, err := h.service().GetUser(r.Context(), r.PathValue("id"))
	if err != nil {
		h.writeError(w, r, err)
		return
	}
	resp := grantsResponse{Items: u.Roles}
	if resp.Items == nil {
		resp.Items = []quota.RoleGrant{}
	}
	h.writeJSON(w, r, http.StatusOK, resp)
}

// revokeRole serves DELETE /users/{id}/roles/{role}?resource=...
func (h *Handler) revokeRole(w http.ResponseWriter, r *http.Request) {
	resource := r.URL.Query().Get("resource")
	if resource == "" {
		h.writeError(w, r, badRequest("resource", "is required: ?resource=chatbots/abc"))
		return
	}
	if err := h.service().RevokeRole(r.Context(), r.PathValue("id"), r.PathValue("role"), resource); err != nil {
		h.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
