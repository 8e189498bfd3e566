"""Search function: the REST API (API Gateway proxy integration) for visual product search.

The model session, the Qdrant client and the S3 client are created at import time, in Lambda's
init phase; each request then only parses, embeds, searches and shapes the response.
"""

from __future__ import annotations

from aws_lambda_powertools.logging import correlation_paths

from visual_search.api import SearchApi
from visual_search.aws import s3_client
from visual_search.catalog import get_catalog
from visual_search.config import get_settings
from visual_search.observability import MetricUnit, logger, metrics, tracer

api = SearchApi(get_catalog(), s3_client(), get_settings())
app = api.app


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict, context) -> dict:
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    return api.resolve(event, context)
