"""The search API app: a Powertools ``APIGatewayRestResolver`` with the routes of
``routes.py`` and the error handlers of ``statuses.py``, bound to a catalogue, an S3 client and
the settings. ``resolve`` also adds the headers every answer carries and counts error answers.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig

from ..catalog import Catalog
from ..config import Settings
from ..feedback import Feedback
from ..observability import MetricUnit, logger, metrics
from . import routes
from .openapi import openapi_json
from .responses import ImageUrls
from .statuses import error_response, register_error_handlers


class SearchResolver(APIGatewayRestResolver):
    """A resolver that makes its ``SearchApi`` current while it resolves an event."""

    def __init__(self, api: SearchApi, **options: Any):
        super().__init__(**options)
        self.api = api

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        token = routes.bind(self.api)
        try:
            return super().resolve(event, context)
        finally:
            routes.unbind(token)


class SearchApi:
    """The routes, bound to a catalogue, an S3 client and the settings."""

    def __init__(self, catalog: Catalog, s3: Any, settings: Settings):
        self.catalog = catalog
        self.s3 = s3
        self.settings = settings
        self.urls = ImageUrls(settings.api)
        bucket = settings.api.bucket  # learning from clicks keeps searches in it
        self.feedback = (
            Feedback(s3, bucket, settings.feedback) if settings.feedback.learn and bucket else None
        )
        self.app = SearchResolver(self, cors=cors_config(settings.api.cors_origins), enable_validation=True)
        routes.register_routes(self.app)
        register_error_handlers(self.app)

    def openapi_json(self) -> str:
        return openapi_json(self.app)

    def resolve(self, event: dict, context: Any) -> dict:
        try:
            response = self.app.resolve(event, context)
        except Exception:  # malformed events the resolver itself cannot take
            logger.exception("event could not be resolved")
            count_error(400)
            return {
                "statusCode": 400,
                "headers": {"Content-Type": "application/json"},
                "body": error_response(400, "bad_request", "the request could not be read").body,
                "isBase64Encoded": False,
            }
        count_error(int(response.get("statusCode") or 0))
        # JSON only, whatever a client echoes into a message: browsers must not sniff it.
        response.setdefault("multiValueHeaders", {})["X-Content-Type-Options"] = ["nosniff"]
        if len(self.settings.api.cors_origins) > 1:
            # The allowed origin echoes the request's: shared caches must key on it.
            response.setdefault("multiValueHeaders", {})["Vary"] = ["Origin"]
        return response


def cors_config(origins: tuple[str, ...]) -> CORSConfig | None:
    if not origins:
        return None
    return CORSConfig(
        allow_origin=origins[0],
        extra_origins=list(origins[1:]) or None,
        allow_headers=["Content-Type", "X-Api-Key"],
        max_age=600,
    )


def count_error(status: int) -> None:
    """ErrorsNNN for every error answer, whichever path made it (a crash included)."""
    if status >= 400:
        metrics.add_metric(name=f"Errors{status}", unit=MetricUnit.Count, value=1)
