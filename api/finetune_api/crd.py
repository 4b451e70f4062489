"""Build the FineTuneJob CustomResourceDefinition from the API models.

`python -m finetune_api.crd --write` (what `make generate` runs)
writes every generated copy; `--check` fails when a copy has drifted from the
models, which is what CI relies on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from finetune_api import names as c

from .schema import assert_structural, object_schema
from .types import NAME_RULE, FineTuneJobSpec, FineTuneJobStatus

HEADER = (
    "# Generated from api/finetune_api/types.py by `make generate`.\n"
    "# Do not edit by hand: a test fails when this file drifts from the models.\n"
)

# Relative to the repository root.
GENERATED_PATHS = (
    Path("manifests/crd/finetune.dev_finetunejobs.yaml"),
    Path("charts/finetune-operator/crds/finetune.dev_finetunejobs.yaml"),
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "One-word state of the job.",
    },
    {
        "name": "Nodes",
        "type": "integer",
        "jsonPath": ".spec.resources.nodes",
        "description": "Nodes (pods) in the gang.",
    },
    {
        "name": "GPUs/Node",
        "type": "integer",
        "jsonPath": ".spec.resources.gpusPerNode",
        "description": "GPUs per node.",
    },
    {
        "name": "Step",
        "type": "integer",
        "jsonPath": ".status.progress.step",
        "description": "Optimizer steps done.",
    },
    {
        "name": "Total",
        "type": "integer",
        "jsonPath": ".status.progress.totalSteps",
        "description": "Optimizer steps planned.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "description": "Latest training loss.",
    },
    {
        "name": "Restarts",
        "type": "integer",
        "jsonPath": ".status.restartCount",
        "priority": 1,
        "description": "Gang restarts after failures.",
    },
    {
        "name": "ETA",
        "type": "integer",
        "jsonPath": ".status.progress.etaSeconds",
        "priority": 1,
        "description": "Estimated seconds left.",
    },
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".spec.model.uri",
        "priority": 1,
        "description": "The pretrained model.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def open_api_schema() -> dict[str, Any]:
    spec = object_schema(FineTuneJobSpec, "spec")
    spec["description"] = FineTuneJobSpec.__doc__
    status = object_schema(FineTuneJobStatus, "status")
    status["description"] = FineTuneJobStatus.__doc__
    assert_structural(spec, "spec")
    return {
        "type": "object",
        "description": "A fine-tuning run of a Hugging Face model on a gang of GPU pods.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "finetune.dev/v1alpha1"},
            "kind": {"type": "string", "description": "FineTuneJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [NAME_RULE.to_schema()],
    }


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": c.CRD_NAME},
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.KIND,
                "listKind": c.LIST_KIND,
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": list(c.SHORT_NAMES),
                "categories": list(c.CATEGORIES),
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write every generated copy")
    mode.add_argument("--check", action="store_true", help="fail if a copy has drifted")
    args = parser.parse_args(argv)
    text = render()
    stale = []
    for rel in GENERATED_PATHS:
        path = args.root / rel
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(str(rel))
    if stale:
        print(f"out of date, run `make generate`: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
