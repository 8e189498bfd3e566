"""Search function: the REST API (API Gateway proxy integration) for visual product search.

The model session and the Qdrant client are created at import time, in Lambda's init phase
(the S3 client on first use: result URLs are signed without one, see visual_search.api.presign,
and only a search by ``s3_key`` reads S3); each request then only parses, embeds, searches and
shapes the response. With SnapStart, the after-restore hook gives each resumed instance new
clients (see visual_search.snapstart).
"""

from __future__ import annotations

from visual_search.snapstart import begin_init

begin_init()  # first: the imports below run with the garbage collector paused

from aws_lambda_powertools.logging import correlation_paths

from visual_search.api import SearchApi
from visual_search.api.presign import LazyS3
from visual_search.catalog import get_catalog
from visual_search.config import get_settings
from visual_search.observability import MetricUnit, logger, metrics, tracer
from visual_search.snapstart import after_restore, finish_init, prewarm, renew

s3 = LazyS3()
prewarm(s3)
api = SearchApi(get_catalog(), s3, get_settings())
app = api.app


@after_restore
def renew_after_restore() -> None:
    renew(api.catalog)
    s3.reset()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict, context) -> dict:
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    return api.resolve(event, context)


finish_init()  # last: everything above lives as long as the instance
