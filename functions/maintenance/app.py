"""Maintenance function: on a schedule, refit the catalogue's projection when it changed enough.

Runs the same code as ``visual-search adapt`` (``visual_search.adaptation.refits.run_maintenance``):
nothing happens unless ``ADAPT_CHANGE_THRESHOLD`` of the catalogue changed since the last fit; a
copy that would not finish before the function's timeout stops a minute early and is resumed by
the next scheduled run. The model session and the Qdrant client are made at import time.
"""

from __future__ import annotations

import time

from visual_search.adaptation.refits import run_maintenance
from visual_search.catalog import get_catalog
from visual_search.config import get_settings
from visual_search.feedback import reviewer
from visual_search.observability import MetricUnit, logger, metrics, tracer
from visual_search.ops.previous import retire_previous

catalog = get_catalog()
settings = get_settings()
# Before a refit, shopper views their neighbours disown are held back (visual_search.feedback).
review = reviewer(catalog, settings.feedback, logger.info)
STOP_BEFORE_TIMEOUT_S = 60.0  # leave this much of the invocation for the last batch and the logs


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict, context) -> dict:
    remaining_s = context.get_remaining_time_in_millis() / 1000.0
    deadline = time.monotonic() + max(1.0, remaining_s - STOP_BEFORE_TIMEOUT_S)
    threshold = (event or {}).get("change_threshold")
    retired = retire_previous(catalog)  # the collection a model change kept, once its time is up
    if retired:
        logger.info("dropped the collection kept for a rollback", extra={"collection": retired})
    out = run_maintenance(
        catalog,
        settings.adapt,
        deadline=deadline,
        threshold=float(threshold) if threshold is not None else None,
        log=logger.info,
        review=review,
    )
    result = out.get("adapt") or {}
    logger.info(
        "maintenance", extra={"due": out["due"], "reason": out["reason"], "status": result.get("status")}
    )
    if result:
        metrics.add_metric(name="Refits", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="PointsRewritten", unit=MetricUnit.Count, value=result.get("copied", 0))
    return {k: v for k, v in out.items() if k != "adapt"} | {
        "retired_previous": retired,
        "status": result.get("status"),
        "projection_id": result.get("projection_id"),
        "cv_recall_raw": result.get("cv_recall_raw"),
        "cv_recall_adapted": result.get("cv_recall_adapted"),
    }
