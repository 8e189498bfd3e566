"""Runs SAM's transform on template.yaml as CloudFormation would (parameter values as strings,
defaults filled in; code URIs as `sam package` leaves them) and prints the resources as JSON.

Run by the python of .venv-sam, where aws-sam-translator is installed:
    .venv-sam/bin/python tests/deploy/sam_translate.py template.yaml '{"QdrantUrl": "https://q:6333"}'
"""

import json
import logging
import sys

logging.disable(logging.WARNING)

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402


class NoManagedPolicies:
    def load(self) -> dict:
        return {}


def main(path: str, overrides: str) -> None:
    with open(path) as f:
        template = yaml_parse(f.read())
    for name, resource in template["Resources"].items():
        for field in ("CodeUri", "ContentUri"):
            if isinstance(resource.get("Properties", {}).get(field), str):
                resource["Properties"][field] = f"s3://artifacts/{name}.zip"
    values = {k: str(v["Default"]) for k, v in template["Parameters"].items() if "Default" in v}
    values.update(json.loads(overrides))
    print(json.dumps(transform(template, values, NoManagedPolicies())["Resources"], default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}")
