"""The package layout: one contract that both sides import, and images that hold
only what they run. No cluster, no network."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from finetune_api.env import TrainerEnv, variables
from finetune_api.metrics import Metric, OperatorMetric

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "finetune_api": ROOT / "api" / "finetune_api",
    "finetune_operator": ROOT / "operator" / "finetune_operator",
    "finetune_trainer": ROOT / "trainer_image" / "finetune_trainer",
}
# Which of our packages each may import (itself aside).
ALLOWED = {
    "finetune_api": set(),
    "finetune_operator": {"finetune_api"},
    "finetune_trainer": {"finetune_api"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a file, including imports inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def import_violations(package: str, root: Path) -> list[str]:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(root.rglob("*.py"))
        for name in sorted(imported_packages(path) & forbidden)
    ]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_side_imports_only_the_contract(package: str) -> None:
    assert import_violations(package, PACKAGES[package]) == []


def test_the_import_rule_catches_a_lazy_import(tmp_path: Path) -> None:
    (tmp_path / "sneaky.py").write_text(
        "def f():\n    from finetune_trainer.checkpoint import CheckpointStore\n"
    )
    assert imported_packages(tmp_path / "sneaky.py") == {"finetune_trainer"}


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


def dockerfile(path: str) -> list[str]:
    """Instructions, continuation lines joined."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@pytest.mark.parametrize(
    ("path", "extra", "trees", "base"),
    [
        ("operator/Dockerfile", "operator", {"api", "operator"}, "python:3.11-slim-bookworm"),
        (
            "trainer_image/Dockerfile",
            "trainer",
            {"api", "trainer_image"},
            "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
        ),
    ],
)
def test_each_image_installs_its_extra_and_copies_only_its_trees(
    path: str, extra: str, trees: set[str], base: str
) -> None:
    lines = dockerfile(path)
    assert f"ARG BASE_IMAGE={base}" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    copied = {
        src.rstrip("/") for line in lines if line.startswith("COPY ") for src in line.split()[1:-1]
    }
    assert copied - {"pyproject.toml", "README.md"} == trees
    installs = [line for line in lines if "pip install" in line]
    assert installs, path
    assert not any("--no-deps" in line for line in installs)
    assert any(f"[{extra}]'" in line for line in installs)
    # Versions come from pyproject.toml, not from a list in the Dockerfile.
    assert not any(re.search(r"\w==\d", line) for line in installs)
    assert extra in extras()


def test_a_tree_without_the_trainer_builds_a_wheel_without_it(tmp_path: Path) -> None:
    """What the operator image's `pip install '.[operator]'` gets from its copies."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for tree in ("api", "operator"):
        shutil.copytree(ROOT / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    # Quiet, as `make install` is: no deprecation of how pyproject.toml says things.
    assert "Deprecat" not in built.stdout + built.stderr, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
        meta = next(z.read(n).decode() for n in z.namelist() if n.endswith("/METADATA"))
    assert tops == {"finetune_api", "finetune_operator"}
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch = [line for line in requires if line.startswith("Requires-Dist: torch")]
    assert torch
    assert all('extra == "trainer"' in line for line in torch)
    assert any(line.startswith("Requires-Dist: kopf") for line in requires)


def test_the_pod_environment_round_trips() -> None:
    env = TrainerEnv(
        job_name="j",
        num_nodes=2,
        node_rank=1,
        work_dir=Path("/scratch"),
        hf_hub_offline=True,
        s3_connect_timeout=2.5,
    )
    written = env.to_env()
    assert written["FT_NUM_NODES"] == "2"
    assert written["HF_HUB_OFFLINE"] == "1"
    assert written["FT_NODE_RANK"] == "1"
    assert written["FT_MASTER_PORT"] == "29500"  # the gang's place, stated in full
    assert "FT_S3_ATTEMPTS" not in written  # a setting at its default is left to the user
    assert TrainerEnv.from_env(written) == env


def test_docs_list_every_pod_variable_with_the_contracts_default() -> None:
    text = (ROOT / "docs" / "trainer.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]*) \|", text, re.MULTILINE))
    expected = {
        name: ("" if default is None else f"`{default}`") for name, default, _ in variables()
    }
    assert {k: v.strip() for k, v in rows.items()} == expected


def test_the_pod_environment_is_spelled_in_one_place() -> None:
    """Each variable name appears in the contract's definition and nowhere else in
    the code (tests and docs may name them)."""
    names = [name for name, _, _ in variables()]
    code = [
        p
        for tree in ("api", "operator", "trainer_image")
        for p in (ROOT / tree).rglob("*.py")
        if p.name != "env.py"
    ]
    found = {
        f"{p.relative_to(ROOT)}: {name}"
        for p in code
        for name in names
        if re.search(rf"[\"'`]{name}[\"'`=]", p.read_text())
    }
    assert found == set()


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        (r"\"trainer\"", "api/finetune_api/names.py"),  # the container name
        (r"step-\{|step-\d|\"step-\"", "api/finetune_api/checkpoints.py"),  # checkpoint folders
        ("|".join(f'"{m.value}"' for m in Metric), "api/finetune_api/metrics.py"),
        ("|".join(f'"{m.value}"' for m in OperatorMetric), "api/finetune_api/metrics.py"),
    ],
)
def test_contract_names_have_one_definition(pattern: str, home: str) -> None:
    code = [
        p
        for tree in ("api", "operator", "trainer_image")
        for p in (ROOT / tree).rglob("*.py")
        if re.search(pattern, p.read_text())
    ]
    assert [str(p.relative_to(ROOT)) for p in code] == [home]
