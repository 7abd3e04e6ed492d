"""``GET /openapi.json``: the REST API described from the same pydantic models the handlers validate with."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from manager import __version__
from manager.api import api_keys as k
from manager.api import console_openapi
from manager.api import key_defaults as kd
from manager.api import login_links as ll
from manager.api import prices as pr
from manager.api import schemas as s
from manager.api import usage as u
from manager.api.autoscaling import MAX_LIMIT, AutoscalingDecisionsResponse
from manager.api.metrics import ServiceMetrics
from manager.api.util import json_response

routes = web.RouteTableDef()

# (method, path, summary, request body model, response model, success status)
OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None, int]] = [
    ("get", "/services", "List the caller's services (optional ?name= exact filter)", None, s.CompactServeInfo, 200),
    ("post", "/services", "Create a service", s.NewServiceRequest, s.ServeInfo, 201),
    ("post", "/services/_/search", "Search services with pagination", s.SearchServicesRequest,
     s.SearchServicesResponse, 200),
    ("post", "/services/_/try", "Dry run: start one replica, report via background-task events",
     s.NewServiceRequest, s.TaskResponse, 200),
    ("get", "/services/_/runtimes", "List runtime variants", None, s.RuntimesResponse, 200),
    ("get", "/services/{service_id}", "Service info", None, s.ServeInfo, 200),
    ("patch", "/services/{service_id}", "Change the service; a new revision rolls out without downtime (extension)",
     s.UpdateServiceRequest, s.ServeInfo, 200),
    ("delete", "/services/{service_id}", "Destroy the service", None, s.SuccessResponse, 200),
    ("get", "/services/{service_id}/errors", "Failed routes and the retry count", None, s.ErrorsResponse, 200),
    ("post", "/services/{service_id}/errors/clear",
     "Clear errors, reset the back-off and read the folder's model definition again", None, None, 204),
    ("get", "/services/{service_id}/metrics", "Live traffic and replica metrics from the app proxies (extension)",
     None, ServiceMetrics, 200),
    ("post", "/services/{service_id}/scale", "Set the desired replica count", s.ScaleRequest, s.ScaleResponse, 200),
    ("post", "/services/{service_id}/sync", "Republish the route table to the app proxies", None,
     s.SuccessResponse, 200),
    ("put", "/services/{service_id}/routings/{route_id}", "Set one route's traffic ratio", s.RouteTrafficRequest,
     s.SuccessResponse, 200),
    ("delete", "/services/{service_id}/routings/{route_id}", "Kill one replica and lower replicas by 1", None,
     s.SuccessResponse, 200),
    ("post", "/services/{service_id}/token", "Mint an endpoint token", s.TokenRequest, s.TokenResponse, 200),
    ("get", "/services/{service_id}/tokens", "List the endpoint's tokens (extension)", None, None, 200),
    ("delete", "/services/{service_id}/tokens/{token_id}", "Revoke a token (extension)", None, s.SuccessResponse,
     200),
    ("get", "/services/{service_id}/autoscaling-decisions",
     "The autoscaler's decisions for the service, newest first (extension)", None, AutoscalingDecisionsResponse,
     200),
    ("get", "/agents", "Agents, their slots and replicas (superadmin; extension)", None, None, 200),
    ("get", "/events/background-task", "Server-sent events of a background task (?task_id=)", None, None, 200),
    ("post", "/folders", "Create a model folder", s.NewFolderRequest, None, 201),
    ("get", "/folders", "List the caller's folders", None, None, 200),
    ("get", "/folders/{name}", "Folder info with its files", None, None, 200),
    ("delete", "/folders/{name}", "Delete a folder and its files", None, None, 204),
    ("post", "/folders/{name}/files", "Upload files (multipart; each part's filename is the path in the folder)",
     None, None, 201),
    ("post", "/api-keys", "Create a gateway API key (the key is in this answer only)", k.NewApiKeyRequest,
     k.NewApiKeyResponse, 201),
    ("get", "/api-keys", "List the caller's gateway API keys (admins: ?all=true)", None, k.ApiKeyList, 200),
    ("patch", "/api-keys/{key_id}", "Change a key's name, models, limits, expiry, priority or metadata",
     k.UpdateApiKeyRequest, k.ApiKeyInfo, 200),
    ("delete", "/api-keys/{key_id}", "Revoke a key (every app proxy refuses it within a second)", None,
     k.ApiKeyInfo, 200),
    ("get", "/usage", "Gateway usage: requests, tokens and cost grouped by day, model, key or user (admins: "
     "everyone's); format=csv for CSV", None, u.UsageResponse, 200),
    ("get", "/prices", "Model prices per 1M input and output tokens (users: those of models they may see)", None,
     pr.PriceList, 200),
    ("put", "/prices/{model}", "Set a model's price (superadmins); usage records cost it from now on",
     pr.PriceRequest, pr.PriceInfo, 200),
    ("delete", "/prices/{model}", "Remove a model's price (superadmins)", None, None, 204),
    ("get", "/users/{user_id}/key-defaults", "The limits, budget and priority a user's keys inherit", None,
     kd.KeyDefaultsInfo, 200),
    ("put", "/users/{user_id}/key-defaults", "Set what a user's keys inherit (admins); republished at once",
     kd.KeyDefaults, kd.KeyDefaultsInfo, 200),
    ("post", "/login-links", "A one-time console login URL for the caller's keypair (keypair-signed only; "
     "what `moorage console login-link` prints)", None, ll.LoginLink, 201),
    *console_openapi.OPERATIONS,  # the folder explorer, Model Store and conversations (docs/console-api.md)
]


UUID = {"type": "string", "format": "uuid"}
# operations whose success body is a JSON array of the response model
ARRAY_RESPONSES = {("get", "/services")}
# operations that can answer 409 (a name taken, a file in the way, an address under contention)
CONFLICTS = {("post", "/services"), ("post", "/folders"), ("post", "/folders/{name}/files"),
             *console_openapi.CONFLICTS}
# error statuses as the handlers use them (RFC 7807 bodies, common/errors.py)
ERROR_DESCRIPTIONS = {
    "400": "invalid parameters: the problem's detail and data.errors name each field and the reason",
    "401": "missing, malformed, expired or replayed signature, or an inactive keypair",
    "404": "no such object, or one the caller may not see",
    "405": "method not allowed; the Allow header lists the allowed ones",
    "409": "conflict: the name is taken, or a file or directory is in the way",
    "413": "request body too large",
}
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    "description": "one part per file; each part's filename is its path inside the folder (relative, no '..', "
                   "names at most 200 bytes, at most limits.max_upload_files parts and limits.max_upload_bytes "
                   "in all)"}}}}

# (method, path) → query parameters, for the routes that take any
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/services"): [
        {"name": "name", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only the service with exactly this name"},
        {"name": "all", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
         "description": "true: every service the caller may see (admins: their domain or all), not only their own"},
    ],
    ("get", "/folders"): [
        {"name": "all", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
         "description": "true: every folder the caller may act for (admins), not only their own"},
        {"name": "usage_mode", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["model", "general", "data"]}},
    ],
    ("get", "/events/background-task"): [
        {"name": "task_id", "in": "query", "required": True, "schema": UUID,
         "description": "the task_id returned by POST /services/_/try"},
    ],
    ("get", "/api-keys"): [
        {"name": "all", "in": "query", "required": False, "schema": {"type": "string", "enum": ["true", "false"]},
         "description": "true: the keys of every user the caller may act for (admins), not only their own"},
    ],
    ("get", "/usage"): [
        {"name": "by", "in": "query", "required": False, "schema": {"type": "string", "default": "day"},
         "description": "comma-separated groups: day, model, key, user"},
        {"name": "since", "in": "query", "required": False, "schema": {"type": "string", "default": "7d"},
         "description": "a duration back from now (7d, 12h) or an ISO 8601 time"},
        {"name": "until", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "likewise; default: now"},
        {"name": "format", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
         "description": "csv: text/csv with a header row (the groups, then the counts and cost)"},
    ],
    ("get", "/services/{service_id}/autoscaling-decisions"): [
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}},
        {"name": "applied_only", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
         "description": "only decisions that changed the replica count"},
    ],
    **console_openapi.QUERY_PARAMETERS,
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}}


def _operation(method: str, path: str, summary: str, request_model: type[BaseModel] | None,
               response_model: type[BaseModel] | None, status: int) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{"BackendAI-HMAC": []}]}
    params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
    parameters = [{"name": p, "in": "path", "required": True,
                   "schema": UUID if p.endswith("_id") else {"type": "string"}} for p in params]
    parameters += QUERY_PARAMETERS.get((method, path), [])
    if parameters:
        op["parameters"] = parameters
    upload = (method, path) == ("post", "/folders/{name}/files")
    if request_model is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{request_model.__name__}"}}}}
    elif upload:
        op["requestBody"] = UPLOAD_BODY
    elif (method, path) in console_openapi.REQUEST_BODIES:
        op["requestBody"] = console_openapi.REQUEST_BODIES[(method, path)]
    success: dict[str, Any] = {"description": "success"}
    if (method, path) in console_openapi.RESPONSE_CONTENT:
        success["content"] = console_openapi.RESPONSE_CONTENT[(method, path)]
    elif response_model is not None:
        ref = {"$ref": f"#/components/schemas/{response_model.__name__}"}
        schema = {"type": "array", "items": ref} if (method, path) in ARRAY_RESPONSES else ref
        success["content"] = {"application/json": {"schema": schema}}
    codes = ["401", "405"]
    if "requestBody" in op or parameters:
        codes.append("400")
    if "requestBody" in op:
        codes.append("413")
    if params:
        codes.append("404")
    if (method, path) in CONFLICTS:
        codes.append("409")
    op["responses"] = {str(status): success, **{c: _problem(ERROR_DESCRIPTIONS[c]) for c in sorted(codes)},
                       "default": _problem("any other RFC 7807 problem (e.g. 503 while no agent has room)")}
    return op


def build_spec() -> dict[str, Any]:
    models = {m for op in OPERATIONS for m in (op[3], op[4]) if m is not None}
    keyed: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in sorted(models, key=lambda m: m.__name__)]
    _, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request_model, response_model, status in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, summary, request_model, response_model, status)
    schemas = dict(defs.get("$defs", {}))
    schemas["Problem"] = {"type": "object", "properties": {
        k: {"type": "string"} for k in ("type", "title", "detail", "msg", "error_code")} | {
        "status": {"type": "integer"}, "data": {}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Moorage manager API (Backend.AI /services compatible)", "version": __version__},
        "paths": {"/": {"get": {"summary": "Version probe (unauthenticated)", "security": [],
                                "responses": {"200": {"description": "version"}}}},
                  "/metrics": {"get": {"summary": "Prometheus metrics of this manager (unauthenticated)",
                                       "security": [], "responses": {"200": {
                                           "description": "text exposition format",
                                           "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
                  **paths},
        "components": {"schemas": schemas, "securitySchemes": {"BackendAI-HMAC": {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "BackendAI signMethod=HMAC-SHA256, credential=<access key>:<signature>; see "
                           "docs/operations.md (Backend.AI keypair signing, Date within auth.clock_skew, 5 minutes by "
                           "default; each signature once; optional X-Moorage-Content-SHA256 body hash, signed)"}}},
    }


_SPEC: dict[str, Any] | None = None


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    global _SPEC
    if _SPEC is None:
        _SPEC = build_spec()
    return json_response(_SPEC)
