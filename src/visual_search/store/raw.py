"""Filters in Qdrant's terms for callers that work on physical collections by name (catalogue
adaptation: ``adaptation.py``, ``projections.py``), so only the store imports qdrant-client."""

from __future__ import annotations

from typing import Any

from qdrant_client import models


def field_is(key: str, value: Any) -> models.Filter:
    """Points whose top-level payload field ``key`` equals ``value``."""
    return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])


def indexed_after(stamp: str) -> models.Filter:
    """Points whose ``indexed_at`` (ISO time) is after ``stamp``."""
    return models.Filter(
        must=[
            models.FieldCondition(key="indexed_at", range=models.DatetimeRange.model_validate({"gt": stamp}))
        ]
    )
