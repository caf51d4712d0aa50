import json, os, sys
def ref(n): return {"$ref": "#/components/schemas/"+n}
def jr(schema): return {"content": {"application/json": {"schema": schema}}}
problem = {"description": "a problem (RFC 9457)", "content": {"application/problem+json": {"schema": ref("Problem")}}}
def resp(code, desc, schema=None):
    r = {"description": desc}
    if schema is not None: r.update(jr(schema))
    return {str(code): r}
def op(summary, perm, ok, body=None, params=None, optional=False):
    o = {"summary": summary, "x-permission": perm, "responses": {}}
    o["responses"].update(ok)
    for c in ["400","401","403","404","409","413","415","500","503"]:
        o["responses"][c] = problem
    o["responses"]["405"] = problem
    if body is not None:
        o["requestBody"] = {"required": not optional, "description": "JSON; a missing Content-Type is read as JSON", **jr(body)}
    if params: o["parameters"] = params
    return o
def q(name, schema, desc=""):
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}
p_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
p_tok = {"name": "tokenId", "in": "path", "required": True, "schema": {"type": "string"}}
p_role = {"name": "role", "in": "path", "required": True, "schema": {"type": "string"}}
nullable_str = {"type": ["string", "null"]}
limit_one = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 0}, "per": {"type": "string", "enum": ["", "lifetime", "minute", "hour", "day", "month"]}}, "required": ["limit"], "additionalProperties": False}]}
schemas = {
 "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
    "errors": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "detail": {"type": "string"}}, "required": ["field", "detail"]}}}, "required": ["type", "title", "status", "detail"]},
 "Limits": {"type": "object", "description": "resource name -> a number (lifetime cap), {limit, per} or a list of them", "additionalProperties": {"oneOf": [limit_one, {"type": "array", "items": limit_one}]}},
 "LimitsPatch": {"type": "object", "additionalProperties": {"oneOf": [limit_one, {"type": "array", "items": limit_one}, {"type": "null"}]}},
 "RoleGrant": {"type": "object", "properties": {"role": {"type": "string"}, "resource": {"type": "string"}, "grantedAt": {"type": "string", "format": "date-time"}}, "required": ["role", "resource", "grantedAt"]},
 "User": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "email": {"type": "string"}, "externalId": {"type": "string"},
    "status": {"type": "string", "enum": ["active", "disabled"]}, "limits": ref("Limits"), "credits": {"type": "integer"}, "createdAt": {"type": "string", "format": "date-time"},
    "updatedAt": {"type": "string", "format": "date-time"}, "roles": {"type": "array", "items": ref("RoleGrant")}, "revision": {"type": "integer"}},
    "required": ["id", "name", "email", "status", "limits", "credits", "createdAt", "updatedAt", "revision"]},
 "Token": {"type": "object", "properties": {"id": {"type": "string"}, "userId": {"type": "string"}, "name": {"type": "string"}, "prefix": {"type": "string"},
    "createdAt": {"type": "string", "format": "date-time"}, "expiresAt": {"type": "string", "format": "date-time"}, "lastUsedAt": {"type": "string", "format": "date-time"},
    "scopes": {"type": "array", "items": {"type": "string"}}, "limits": ref("Limits"), "revision": {"type": "integer", "description": "counts the changes made to the token (a use is none)"}}, "required": ["id", "userId", "name", "prefix", "createdAt"]},
 "IssuedToken": {"allOf": [ref("Token"), {"type": "object", "properties": {"token": {"type": "string", "description": "the secret, shown only once"}}, "required": ["token"]}]},
 "UsageItem": {"type": "object", "properties": {"resource": {"type": "string"}, "per": {"type": "string"}, "used": {"type": "integer"}, "reserved": {"type": "integer"},
    "limit": {"type": ["integer", "null"]}, "remaining": {"type": ["integer", "null"]}, "resetsAt": {"type": ["string", "null"], "format": "date-time"}}, "required": ["resource", "per", "used", "limit", "remaining", "resetsAt"]},
 "Usage": {"type": "object", "properties": {"userId": {"type": "string"}, "at": {"type": "string", "format": "date-time"}, "credits": {"type": "integer"},
    "items": {"type": "array", "items": ref("UsageItem")}}, "required": ["userId", "at", "credits", "items"]},
 "UsageByModel": {"type": "object", "properties": {"userId": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
    "models": {"type": "object", "additionalProperties": {"type": "array", "items": ref("UsageItem")}}}, "required": ["userId", "at", "models"]},
 "TokenUsage": {"type": "object", "properties": {"userId": {"type": "string"}, "tokenId": {"type": "string"}, "items": {"type": "array", "items": ref("UsageItem")}}, "required": ["userId", "tokenId", "items"]},
 "CloudEvent": {"type": "object", "properties": {"specversion": {"type": "string", "const": "1.0"}, "id": {"type": "string"}, "source": {"type": "string"}, "type": {"type": "string"},
    "time": {"type": "string", "format": "date-time"}, "subject": {"type": "string"}, "datacontenttype": {"type": "string"}, "actor": {"type": "string"}, "data": {}},
    "required": ["specversion", "id", "source", "type", "time", "subject", "data"]},
}
user_in = {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}, "externalId": {"type": "string"}, "limits": ref("Limits"),
    "credits": {"type": "integer", "minimum": 0}, "status": {"type": "string", "enum": ["active", "disabled"]}, "issueToken": {"type": "boolean"},
    "tokenName": {"type": "string"}, "tokenExpiresAt": {"type": "string", "format": "date-time"}}, "required": ["name", "email"], "additionalProperties": False}
user_patch = {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}, "externalId": {"type": "string"}, "limits": ref("LimitsPatch"),
    "status": {"type": "string", "enum": ["active", "disabled"]}}, "additionalProperties": False}
token_in = {"type": "object", "properties": {"name": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}, "scopes": {"type": "array", "items": {"type": "string"}}, "limits": ref("Limits")}, "additionalProperties": False}
token_patch = {"type": "object", "properties": {"name": {"type": "string"}, "expiresAt": {"type": ["string", "null"], "format": "date-time", "description": "a time in the future, or null for no expiry"},
    "limits": ref("LimitsPatch")}, "additionalProperties": False, "description": "fields left out stay as they are; limits are merged (null removes a resource's); scopes cannot change"}
items = lambda s: {"type": "object", "properties": {"items": {"type": "array", "items": s}, "nextCursor": {"type": "string"}}, "required": ["items"]}
event_page = {"type": "object", "properties": {"items": {"type": "array", "items": ref("CloudEvent")},
    "nextCursor": {"type": "string", "description": "present while more events are there: fetch the next page at once with after=<nextCursor>"},
    "cursor": {"type": "string", "description": "on every page, the last and an empty one too: poll with after=<cursor> later to see only newer events"}},
    "required": ["items", "cursor"]}
paths = {
 "/users": {
   "post": op("Create a user", "users.create", resp(201, "created", {"type": "object", "properties": {"user": ref("User"), "token": ref("IssuedToken")}, "required": ["user"]}), user_in),
   "get": op("List users, or look one up by email or external id", "users.read", resp(200, "a page", items(ref("User"))), params=[q("take", {"type": "integer", "minimum": 1, "maximum": 1000}), q("cursor", {"type": "string"}), q("email", {"type": "string"}), q("externalId", {"type": "string"})])},
 "/users/{id}": {"parameters": [p_id],
   "get": op("Get a user", "users.read", resp(200, "the user", ref("User"))),
   "patch": op("Update a user", "users.update", resp(200, "the user", ref("User")), user_patch),
   "delete": op("Delete a user, its tokens and its counters", "users.delete", resp(204, "deleted"))},
 "/users/{id}/tokens": {"parameters": [p_id],
   "post": op("Create a token", "tokens.create", resp(201, "created; the secret is shown once", ref("IssuedToken")), token_in, optional=True),
   "get": op("List a user's tokens", "tokens.read", resp(200, "the tokens", items(ref("Token"))))},
 "/users/{id}/tokens/{tokenId}": {"parameters": [p_id, p_tok],
   "get": op("Get a token (never its secret)", "tokens.read", resp(200, "the token", ref("Token"))),
   "patch": op("Change a token's name, expiry or limits", "tokens.update", resp(200, "the token", ref("Token")), token_patch),
   "delete": op("Revoke a token", "tokens.revoke", resp(204, "revoked"))},
 "/users/{id}/tokens/{tokenId}/usage": {"parameters": [p_id, p_tok],
   "get": op("A token's own limits and usage", "usage.read", resp(200, "usage", ref("TokenUsage")))},
 "/users/{id}/limits": {"parameters": [p_id],
   "get": op("Get a user's limits", "limits.read", resp(200, "limits", ref("Limits"))),
   "put": op("Replace a user's limits", "limits.write", resp(200, "limits", ref("Limits")), ref("Limits")),
   "patch": op("Merge into a user's limits (null removes a resource)", "limits.write", resp(200, "limits", ref("Limits")), ref("LimitsPatch"))},
 "/users/{id}/usage": {"parameters": [p_id],
   "get": op("A user's usage; with by=model, token usage by model group", "usage.read", resp(200, "usage", {"oneOf": [ref("Usage"), ref("UsageByModel")]}),
      params=[q("by", {"type": "string", "enum": ["model"]})])},
 "/users/{id}/usage/reset": {"parameters": [p_id],
   "post": op("Reset counters (all but the credits spent, or the named resources)", "usage.reset", resp(200, "usage", ref("Usage")),
      {"type": "object", "properties": {"resources": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": False}, optional=True)},
 "/users/{id}/credits": {"parameters": [p_id],
   "post": op("Top up prepaid credits", "credits.add", resp(200, "the user", ref("User")),
      {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 1}}, "required": ["amount"], "additionalProperties": False})},
 "/users/{id}/roles": {"parameters": [p_id],
   "get": op("A user's role grants", "roles.read", resp(200, "grants", items(ref("RoleGrant")))),
   "post": op("Grant a role on a resource", "roles.grant", resp(201, "granted", ref("RoleGrant")),
      {"type": "object", "properties": {"role": {"type": "string"}, "resource": {"type": "string"}}, "required": ["role", "resource"], "additionalProperties": False})},
 "/users/{id}/roles/{role}": {"parameters": [p_id, p_role, {"name": "resource", "in": "query", "required": True, "schema": {"type": "string"}}],
   "delete": op("Revoke a grant", "roles.revoke", resp(204, "revoked"))},
 "/events": {"get": op("The event log, oldest first", "events.read", resp(200, "a page", event_page),
   params=[q("after", {"type": "string"}, "the cursor (or nextCursor) of an earlier page: only events written after it; not an event id"),
      q("type", {"type": "string"}), q("userId", {"type": "string"}), q("take", {"type": "integer", "minimum": 1, "maximum": 1000})])},
 "/openapi.json": {"get": {"summary": "This document (no key needed)", "security": [], "responses": {"200": {"description": "the document", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
}
# Each operation's operationId, by method and path (never by position):
# client generators make method names of them, so renaming one breaks every
# generated client. admin/openapi_test.go pins the same names.
operation_ids = {
 "POST /users": "createUser",
 "GET /users": "listUsers",
 "GET /users/{id}": "getUser",
 "PATCH /users/{id}": "updateUser",
 "DELETE /users/{id}": "deleteUser",
 "POST /users/{id}/tokens": "createToken",
 "GET /users/{id}/tokens": "listTokens",
 "GET /users/{id}/tokens/{tokenId}": "getToken",
 "PATCH /users/{id}/tokens/{tokenId}": "updateToken",
 "DELETE /users/{id}/tokens/{tokenId}": "revokeToken",
 "GET /users/{id}/tokens/{tokenId}/usage": "getTokenUsage",
 "GET /users/{id}/limits": "getLimits",
 "PUT /users/{id}/limits": "replaceLimits",
 "PATCH /users/{id}/limits": "updateLimits",
 "GET /users/{id}/usage": "getUsage",
 "POST /users/{id}/usage/reset": "resetUsage",
 "POST /users/{id}/credits": "addCredits",
 "GET /users/{id}/roles": "listRoles",
 "POST /users/{id}/roles": "grantRole",
 "DELETE /users/{id}/roles/{role}": "revokeRole",
 "GET /events": "listEvents",
 "GET /openapi.json": "getOpenAPI",
}
for path, item in paths.items():
    for method in [m for m in item if m != "parameters"]:
        key = method.upper() + " " + path
        if key not in operation_ids:
            sys.exit("scripts/openapi.py: no operationId for " + key)
        item[method] = {"operationId": operation_ids.pop(key), **item[method]}
if operation_ids:
    sys.exit("scripts/openapi.py: operationIds of no operation: " + ", ".join(operation_ids))
doc = {"openapi": "3.1.0",
 "info": {"title": "caddy-tenant-quota admin API", "version": "1", "description": "Users, tokens, limits, usage, credits, roles and events of caddy-tenant-quota, relative to the tenant_quota_admin mount (e.g. /quota). Each operation names its required permission in x-permission."},
 "servers": [{"url": "/quota"}],
 "security": [{"adminKey": []}],
 "paths": paths,
 "components": {"schemas": schemas, "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer", "description": "an admin key"}}}}
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'admin', 'openapi.json'), 'w').write(json.dumps(doc, indent=1)+"\n")
