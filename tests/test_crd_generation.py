"""The CRD is generated from the Python models and never drifts from them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api import crd
from finetune_api.schema import SchemaError, object_schema
from finetune_api.types import FineTuneJob, FineTuneJobSpec, ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_api.crd", "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_generated_files_match_the_models() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_check_fails_when_a_generated_file_is_edited(tmp_path: Path) -> None:
    for rel in crd.GENERATED_PATHS:
        (tmp_path / rel).parent.mkdir(parents=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert run_check(tmp_path).returncode == 0
    edited = tmp_path / crd.GENERATED_PATHS[-1]
    edited.write_text(edited.read_text().replace("default: 3\n", "default: 4\n", 1))
    result = run_check(tmp_path)
    assert result.returncode == 1
    assert str(crd.GENERATED_PATHS[-1]) in result.stderr
    assert "make generate" in result.stderr


def walk_properties(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, prop in schema.get("properties", {}).items():
        found.append((f"{path}.{name}", prop))
        found += walk_properties(prop, f"{path}.{name}")
        if "items" in prop:
            found += walk_properties(prop["items"], f"{path}.{name}[]")
    return found


def spec_schema() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / crd.GENERATED_PATHS[0]).read_text())
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = spec_schema()
    fields = walk_properties(schema["properties"]["spec"], "spec")
    fields += walk_properties(schema["properties"]["status"], "status")
    assert len(fields) > 100
    missing = [path for path, prop in fields if not prop.get("description")]
    assert missing == []


def test_spec_is_structural_and_prunes_nothing_silently() -> None:
    text = yaml.safe_dump(spec_schema()["properties"]["spec"])
    assert "x-kubernetes-preserve-unknown-fields" not in text
    assert "$ref" not in text
    assert "anyOf" not in text


def test_training_field_names_follow_hugging_face() -> None:
    training = spec_schema()["properties"]["spec"]["properties"]["training"]["properties"]
    for name in (
        "numTrainEpochs",
        "maxSteps",
        "learningRate",
        "perDeviceTrainBatchSize",
        "gradientAccumulationSteps",
        "weightDecay",
        "warmupSteps",
        "warmupRatio",
        "lrSchedulerType",
        "seed",
        "evalStrategy",
        "evalSteps",
        "loggingSteps",
        "metricForBestModel",
        "maxGradNorm",
    ):
        assert name in training


def test_a_field_without_description_cannot_be_generated() -> None:
    class Undocumented(ModelSpec):
        extra_knob: int = 1

    with pytest.raises(SchemaError, match="extraKnob has no description"):
        object_schema(Undocumented, "spec.model")


def test_the_examples_parse_with_the_models() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        job = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
        assert isinstance(job.spec, FineTuneJobSpec)
        assert job.spec.model.trust_remote_code is False
