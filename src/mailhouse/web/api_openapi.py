"""The admin API's OpenAPI 3.1 description, made from the same endpoint table as its routes
(web/api_http.Endpoint), so a route cannot go undescribed or a description outlive its route."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mailhouse import __version__
from mailhouse.service.api_tokens import SCOPES
from mailhouse.web.api_http import MAX_API_BODY, Endpoint
from mailhouse.web.api_schemas import ERROR

_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")
_ERRORS = {"400": "invalid input", "401": "no token, or not a valid one",
           "403": "the token lacks the scope", "404": "not found", "409": "in the way",
           "413": f"the body is over {MAX_API_BODY} octets",
           "429": "too many failed token checks from this address"}


def openapi_path(path: str) -> str:
    """Starlette's `{id:int}` as OpenAPI's `{id}`."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer" if convertor == "int" else "string"}}
                  for name, convertor in _PARAM.findall(endpoint.path)]
    parameters += [{"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                   for name, kind in endpoint.query]
    success: dict[str, Any] = {"description": endpoint.summary}
    if endpoint.response is not None:
        success["content"] = {"application/json": {"schema": endpoint.response}}
    elif endpoint.media_type != "application/json":
        success["content"] = {endpoint.media_type: {"schema": {"type": "string"}}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.method.lower() + re.sub(r"\W+", "_", endpoint.path).rstrip("_"),
        "security": [{"bearer": [endpoint.scope]}],
        "x-scope": endpoint.scope,
        "responses": {str(endpoint.status): success,
                      **{code: {"description": text, **error} for code, text in _ERRORS.items()}},
    }
    if parameters:
        operation["parameters"] = parameters
    if endpoint.request is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": endpoint.request}}}
    return operation


def openapi(endpoints: Sequence[Endpoint], prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(openapi_path(endpoint.path), {})[endpoint.method.lower()] = \
            _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailhouse admin API", "version": __version__,
                 "description": "Scopes: " + "; ".join(f"{k}: {v}" for k, v in SCOPES.items())},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "`mailhouse operator token add NAME --scope S` makes one"}},
        },
    }
