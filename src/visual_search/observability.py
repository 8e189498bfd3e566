"""One Logger, Metrics and Tracer for the whole service (Powertools).

Names come from POWERTOOLS_SERVICE_NAME / POWERTOOLS_METRICS_NAMESPACE when set; locally the
tracer is disabled with POWERTOOLS_TRACE_DISABLED=true (the tests and the local stack set it).
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "visual-search")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "VisualSearch")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
