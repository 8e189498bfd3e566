"""Configuration: documented defaults, environment overrides, clear errors for bad values."""

from __future__ import annotations

import pytest

from visual_search.config import DEFAULT_QDRANT_PATH, REPO_MODEL_DIR, load_settings

VARS = (
    "QDRANT_URL",
    "QDRANT_API_KEY",
    "QDRANT_PATH",
    "COLLECTION",
    "MODEL_DIR",
    "QDRANT_QUANTIZATION",
    "QDRANT_TIMEOUT",
    "MAX_IMAGE_PIXELS",
    "ORT_THREADS",
    "QDRANT_FILTERED_HNSW_EF",
    "QDRANT_SEARCH_HNSW_EF",
    "QDRANT_FILTERED_ACORN",
    "QDRANT_ACORN_MAX_SELECTIVITY",
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    settings = load_settings()
    assert settings.store.mode == "embedded" and settings.store.path == DEFAULT_QDRANT_PATH
    assert settings.store.collection == "products"
    assert settings.store.quantization == "int8" and settings.store.vectors_on_disk
    assert settings.model_dir == REPO_MODEL_DIR
    assert settings.ort_threads >= 1
    assert settings.images.max_pixels == 50_000_000


def test_server_mode_and_overrides(clean_env):
    clean_env.setenv("QDRANT_URL", "https://cluster.example:6333")
    clean_env.setenv("QDRANT_API_KEY", "secret")
    clean_env.setenv("COLLECTION", "shop")
    clean_env.setenv("QDRANT_QUANTIZATION", "none")
    clean_env.setenv("QDRANT_TIMEOUT", "2.5")
    settings = load_settings()
    assert settings.store.mode == "server" and settings.store.api_key == "secret"
    assert settings.store.collection == "shop" and settings.store.quantization == "none"
    assert settings.store.timeout_s == 2.5


def test_filtered_search_settings(clean_env):
    store = load_settings().store
    assert store.filtered_hnsw_ef == 1024 and store.search_hnsw_ef == 128
    clean_env.setenv("QDRANT_FILTERED_ACORN", "true")
    clean_env.setenv("QDRANT_ACORN_MAX_SELECTIVITY", "0.1")
    store = load_settings().store
    assert store.filtered_acorn and store.acorn_max_selectivity == 0.1


def test_memory_mode(clean_env):
    clean_env.setenv("QDRANT_PATH", ":memory:")
    assert load_settings().store.mode == "memory"


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("QDRANT_TIMEOUT", "soon", "QDRANT_TIMEOUT must be a number"),
        ("MAX_IMAGE_PIXELS", "lots", "MAX_IMAGE_PIXELS must be an integer"),
        ("QDRANT_QUANTIZATION", "pq", "QDRANT_QUANTIZATION must be int8 or none"),
        ("QDRANT_ACORN_MAX_SELECTIVITY", "1.5", "QDRANT_ACORN_MAX_SELECTIVITY must be from 0 to 1"),
    ],
)
def test_bad_values_name_the_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()
