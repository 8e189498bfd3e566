"""Run the Lambda functions in this process: load ``functions/<name>/app.py`` fresh, as a new
container would, and give them a context object. Used by the local stack and the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FUNCTIONS = Path(__file__).resolve().parents[3] / "functions"  # in a source checkout


def load_function(name: str, fresh_catalog: bool = True) -> ModuleType:
    path = FUNCTIONS / name / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from a checkout of the repository")
    if fresh_catalog:
        # Only modules already imported hold cached settings or a catalogue: importing them here
        # would run the function's imports before its first line, which Lambda does not.
        for imported, cached in (
            ("visual_search.config", "get_settings"),
            ("visual_search.catalog", "get_catalog"),
        ):
            if imported in sys.modules:
                getattr(sys.modules[imported], cached).cache_clear()
    module_name = f"lambda_{name}_app"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """The attributes of Lambda's context object that Powertools reads; named after the function
    that runs (the local stack passes its own names, the tests keep the defaults)."""

    function_version = "$LATEST"
    memory_limit_in_mb = 2048
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self, function_name: str = "visual-search-test", log_stream_name: str = "test"):
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 300_000
