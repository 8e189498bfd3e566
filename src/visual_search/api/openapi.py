"""The OpenAPI document: what Powertools generates from the routes, plus what it cannot infer
(the three body forms of ``POST /search`` and the query options read by hand)."""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from .models import SearchRequest, UploadRequest
from .requests import IMAGE_TYPES

API_VERSION = "1.0.0"
# Options given in the query string (raw image bodies, GET) or as form fields (multipart).
QUERY_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("top_k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
    ("offset", {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0}),
    ("score_threshold", {"type": "number", "minimum": -1, "maximum": 1}),
    ("group_by_product", {"type": "boolean", "default": True}),
    ("min_confidence", {"type": "number", "minimum": 0, "maximum": 1}),
    ("positive", {"type": "string", "description": "more like this: comma-separated product ids"}),
    ("negative", {"type": "string", "description": "not this: comma-separated product ids"}),
    ("category", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("brand", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("product_id", {"type": "string", "description": "one value, or comma-separated any-of"}),
    ("price_min", {"type": "number"}),
    ("price_max", {"type": "number"}),
    ("filters", {"type": "string", "description": "the JSON filter object"}),
]


def openapi_json(app: APIGatewayRestResolver) -> str:
    schema = json.loads(
        app.get_openapi_json_schema(
            title="Visual product search",
            version=API_VERSION,
            description="Find products by photo. See README.md and docs/api.md.",
        )
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    refs = {}
    for model in (SearchRequest, UploadRequest):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        refs[model] = {"$ref": f"#/components/schemas/{model.__name__}"}
    image = {"type": "string", "format": "binary"}
    search = schema["paths"]["/search"]["post"]
    search["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {"schema": refs[SearchRequest]},
            **{media: {"schema": image} for media in IMAGE_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": image, **dict(QUERY_OPTIONS)},
                }
            },
        },
    }
    query = [{"name": name, "in": "query", "required": False, "schema": spec} for name, spec in QUERY_OPTIONS]
    search["parameters"] = query
    schema["paths"]["/products/{product_id}/similar"]["get"]["parameters"] += query
    schema["paths"]["/uploads"]["post"]["requestBody"] = {
        "content": {"application/json": {"schema": refs[UploadRequest]}}
    }
    return json.dumps(schema)
