"""The search API: routes on Powertools' APIGatewayRestResolver, for API Gateway REST proxy
events. The search function's handler only builds a ``SearchApi`` and resolves events with it.

Routes: ``POST /search`` (JSON base64 / JSON s3_key / raw image body / multipart form),
``GET /products/{product_id}/similar``, ``POST /uploads``, ``GET /health``, ``GET /facets``,
``GET /openapi.json``. Every error has one JSON shape: ``{"error": {"code", "message",
"details"?}}``; nothing answers with a stack trace.

Modules: ``app`` (the resolver and ``SearchApi``), ``routes`` (one function a route),
``requests`` (reading bodies and options), ``responses`` (shaping results, image URLs),
``statuses`` (error type -> HTTP status, the error shape), ``openapi`` (the document).
"""

from .app import SearchApi
from .statuses import STATUS_BY_ERROR, error_response, status_for

__all__ = ["STATUS_BY_ERROR", "SearchApi", "error_response", "status_for"]
