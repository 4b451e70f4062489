"""The data shapes Hugging Face users already have: save_to_disk folders,
compressed text, CSV with quoted line breaks, string and ClassLabel labels.
Data is made by the tests with `datasets`, pyarrow and the standard library, and
read from local folders and from the test S3 server."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from finetune_api.types import FineTuneJobSpec
from finetune_trainer.data import BLOCK, Position, Source, count_units, stream
from finetune_trainer.data.columnar import RECORD_BATCH, ipc_messages
from finetune_trainer.errors import PermanentError
from finetune_trainer.storage import LocalStore
from trainer_support import ensure_bucket

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "local" / "data" / "quickstart"
Row = tuple[str, int]


def quickstart(split: str) -> list[dict[str, Any]]:
    lines = (QUICKSTART / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def spec_for(uri: str, s3: Any = None, **dataset: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "model": {"uri": "file:///unused"},
        "dataset": {"uri": uri, "textColumns": ["text"], **dataset},
        "checkpoints": {"uri": "file:///unused"},
    }
    if s3 is not None:
        doc["s3"] = {"endpoint": s3.endpoint, "forcePathStyle": True}
    return FineTuneJobSpec.model_validate(doc)


def in_file_order(spec: FineTuneJobSpec, world: int = 1, shard: int = 1 << 20) -> list[Row]:
    """Every record of the training data, unit after unit, as the trainer reads them."""
    source = Source(spec)
    return [
        (e.texts[0], e.label)
        for unit in source.plan_units(world, shard)
        for _, e in source.records(unit, None)
        if e is not None
    ]


def epoch(spec: FineTuneJobSpec, world: int, shard: int, n: int = 0) -> list[Counter[Row]]:
    """What each of `world` ranks trains on in epoch n."""
    source = Source(spec)
    units = source.plan_units(world, shard)
    index = count_units(source, units, list(range(len(units))))
    return [
        Counter((e.texts[0], e.label) for e, _ in stream(source, index, Position(n), 7, r, world))
        for r in range(world)
    ]


def save_dict(dest: Path, labels: str, **splits: list[dict[str, Any]]) -> Path:
    """A DatasetDict written by save_to_disk; `labels` is "classlabel" or "strings"."""
    import datasets

    names = ["negative", "positive"]
    if labels == "classlabel":
        label = datasets.ClassLabel(names=names)
    else:
        label = datasets.Value("string")
        splits = {k: [{**r, "label": names[r["label"]]} for r in v] for k, v in splits.items()}
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    parts = {k: datasets.Dataset.from_list(v, features=features) for k, v in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(dest), max_shard_size="20KB")
    return dest


# --- save_to_disk folders ------------------------------------------------------------


def test_a_saved_dataset_dict_is_read_exactly_once_per_epoch_by_range(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    rows, dev = quickstart("train"), quickstart("dev")
    folder = save_dict(tmp_path / "dd", "classlabel", train=rows, validation=dev)
    arrows = sorted((folder / "train").glob("*.arrow"))
    assert len(arrows) > 1  # several shards, each of several record batches
    # The batch index read from the message headers matches pyarrow's own reading.
    import pyarrow as pa

    store = LocalStore("file:///", Path("/"))
    for path in arrows:
        key = str(path).lstrip("/")
        messages = ipc_messages(store, key, path.stat().st_size)
        found = [m[3] for m in messages if m[2] == RECORD_BATCH]
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            assert found == [b.num_rows for b in reader]
    client = s3.client()
    ensure_bucket(client, "data")
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "data", f"saved/{path.relative_to(folder)}")
    spec = spec_for("s3://data/saved/", s3, evalSplit="validation")
    expected = Counter((r["text"], r["label"]) for r in rows)
    for n in (0, 1):
        rank0, rank1 = epoch(spec, world=2, shard=16 * 1024, n=n)
        assert rank0 + rank1 == expected
    source = Source(spec)
    assert source.class_names == ["negative", "positive"]
    assert sorted((e.texts[0], e.label) for e in source.read_eval_files()) == sorted(
        (r["text"], r["label"]) for r in dev
    )


def test_string_labels_map_to_label_names_and_a_lone_dataset_holds_out(tmp_path: Path) -> None:
    import datasets

    rows = quickstart("train")
    names = ["negative", "positive"]
    strings = [{"text": r["text"], "label": names[r["label"]]} for r in rows]
    datasets.Dataset.from_list(strings).save_to_disk(str(tmp_path / "one"))
    spec = spec_for(f"file://{tmp_path}/one", format="arrow", evalFraction=0.2)
    spec.model.label_names, spec.model.num_labels = names, 2
    source = Source(spec)
    units = source.plan_units(1, 1 << 20)
    index = count_units(source, units, list(range(len(units))))
    trained = [(e.texts[0], e.label) for e, _ in stream(source, index, Position(), 7, 0, 1)]
    held = [(e.texts[0], e.label) for e in index.eval_examples]
    assert 100 < len(held) < 300
    assert Counter(trained + held) == Counter((r["text"], r["label"]) for r in rows)


def test_a_classlabel_gives_the_job_its_label_names_unless_numlabels_disagrees(
    tmp_path: Path,
) -> None:
    folder = save_dict(tmp_path / "dd", "classlabel", train=quickstart("train")[:50])
    spec = spec_for(f"file://{folder}")
    Source(spec).adopt_labels(spec.model)
    assert (spec.model.num_labels, spec.model.label_names) == (2, ["negative", "positive"])
    spec = spec_for(f"file://{folder}")
    spec.model = spec.model.model_validate({"uri": "file:///unused", "numLabels": 3})
    with pytest.raises(PermanentError) as e:
        Source(spec).adopt_labels(spec.model)
    assert str(e.value).startswith("spec.model.numLabels: 3, but the label column 'label' is a")
    assert "2 names (negative, positive)" in str(e.value)


# --- compressed files ----------------------------------------------------------------


def compressed(data: bytes, codec: str) -> bytes:
    if codec == "zst":
        import pyarrow as pa

        out = pa.BufferOutputStream()
        with pa.CompressedOutputStream(out, "zstd") as stream_:
            stream_.write(data)
        return bytes(out.getvalue().to_pybytes())
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec](data)


def as_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows([r["text"], r["label"]] for r in rows)
    return out.getvalue().encode()


def as_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_compressed_and_plain_files_give_the_same_examples(tmp_path: Path) -> None:
    rows = quickstart("train")
    files = {
        "plain.csv": as_csv(rows),
        "plain.jsonl": as_jsonl(rows),
        "c.csv.gz": compressed(as_csv(rows), "gz"),
        "c.jsonl.zst": compressed(as_jsonl(rows), "zst"),
        "c.csv.bz2": compressed(as_csv(rows), "bz2"),
        "c.jsonl.xz": compressed(as_jsonl(rows), "xz"),
    }
    expected = [(r["text"], r["label"]) for r in rows]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        spec = spec_for(f"file://{tmp_path}/{name}")
        assert in_file_order(spec, shard=16 * 1024) == expected, name
        assert sum(epoch(spec, world=1, shard=16 * 1024), Counter()) == Counter(expected), name
    # Many compressed files: one unit each, balanced across the ranks.
    for part in range(8):
        chunk = rows[part * 125 : (part + 1) * 125]
        (tmp_path / "many").mkdir(exist_ok=True)
        (tmp_path / "many" / f"train-{part}.jsonl.gz").write_bytes(
            compressed(as_jsonl(chunk), "gz")
        )
    rank0, rank1 = epoch(spec_for(f"file://{tmp_path}/many/"), world=2, shard=16 * 1024)
    assert rank0 + rank1 == Counter(expected)
    assert sum(rank0.values()) == sum(rank1.values()) == 500


@pytest.mark.parametrize("layout", ["compressed", "saved"])
def test_a_stream_resumes_exactly_from_any_position(tmp_path: Path, layout: str) -> None:
    rows = quickstart("train") * 2
    if layout == "compressed":
        for part, codec in enumerate(["gz", "zst", "xz"]):
            chunk = as_jsonl(rows[part * 700 : (part + 1) * 700])
            (tmp_path / f"train-{part}.jsonl.{codec}").write_bytes(compressed(chunk, codec))
    else:
        save_dict(tmp_path / "saved", "classlabel", train=rows)
    spec = spec_for(f"file://{tmp_path}/")
    source = Source(spec)
    units = source.plan_units(1, 16 * 1024)
    index = count_units(source, units, list(range(len(units))))
    full = list(stream(source, index, Position(), 3, 0, 1))
    assert len(full) == 2000
    for cut in (1, BLOCK - 1, BLOCK, BLOCK + 1, len(full) // 2, len(full) - 1):
        rest = [e for e, _ in stream(Source(spec), index, full[cut - 1][1], 3, 0, 1)]
        assert rest == [e for e, _ in full[cut:]], cut


# --- CSV as csv.reader reads it --------------------------------------------------------

PIECES = ["good", "bad", "not", ",", '"', "\n", "\r\n", " ", "但是", "'", "\t", '""', "x" * 40]


def random_csv(rng: random.Random, rows: int) -> tuple[bytes, list[Row]]:
    out = io.StringIO(newline="")
    quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])
    writer = csv.writer(out, quoting=quoting, lineterminator=rng.choice(["\n", "\r\n"]))
    writer.writerow(["id", "text", "label"])
    for i in range(rows):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 12)))
        writer.writerow([i, text, rng.randrange(2)])
    data = out.getvalue().encode()
    expected = [
        (r["text"], int(r["label"]))
        for r in csv.DictReader(io.StringIO(data.decode(), newline=""))
        if r["text"].strip()
    ]
    return data, expected


@pytest.mark.parametrize("seed", range(6))
def test_csv_with_quoted_line_breaks_yields_exactly_the_rows_csv_reader_does(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    data, expected = random_csv(rng, rng.randrange(1500, 4000))
    (tmp_path / "train.csv").write_bytes(data)
    spec = spec_for(f"file://{tmp_path}/train.csv")
    for world in (1, 2, 3):
        shard = rng.choice([16 * 1024, 20 * 1024, 64 * 1024])
        assert in_file_order(spec, world, shard) == expected, (world, shard)
        ranks = epoch(spec, world, shard, n=rng.randrange(3))
        assert sum(ranks, Counter()) == Counter(expected), (world, shard)


# --- bad input -----------------------------------------------------------------------


def read_all(spec: FineTuneJobSpec) -> None:
    source = Source(spec)
    units = source.plan_units(1, 1 << 20)
    count_units(source, units, list(range(len(units))))
    source.read_eval_files()


def permanent(spec: FineTuneJobSpec) -> str:
    with pytest.raises(PermanentError) as e:
        read_all(spec)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_data_is_one_permanent_line_naming_what_to_fix(tmp_path: Path) -> None:
    rows = quickstart("train")[:60]
    folder = save_dict(tmp_path / "dd", "classlabel", train=rows, validation=rows)
    message = permanent(spec_for(f"file://{folder}", evalSplit="test"))
    assert message.startswith("spec.dataset.evalSplit: no split 'test' in file://")
    assert message.endswith("its splits are: train, validation")

    (folder / "train" / "state.json").unlink()
    message = permanent(spec_for(f"file://{folder}"))
    assert "the split folder" in message
    assert "train/ has no state.json" in message

    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "data-00000-of-00001.arrow").write_bytes(
        (folder / "validation" / "data-00000-of-00001.arrow").read_bytes()
    )
    message = permanent(spec_for(f"file://{loose}"))
    assert message.startswith(f"spec.dataset.uri: file://{loose} is not a folder written by")
    assert "no dataset_dict.json (a DatasetDict) and no state.json (a Dataset)" in message
    assert message.endswith("it holds: data-00000-of-00001.arrow")

    strings = save_dict(tmp_path / "s", "strings", train=rows)
    spec = spec_for(f"file://{strings}")
    spec.model.label_names = ["negative", "neutral"]
    message = permanent(spec)
    assert message.startswith("spec.model.labelNames: label 'positive' in ")
    assert " row " in message
    assert "is not one of 'negative', 'neutral'" in message

    damaged = bytearray(compressed(as_csv(quickstart("train")), "gz"))
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "train.csv.gz").write_bytes(bytes(damaged))
    message = permanent(spec_for(f"file://{tmp_path}/train.csv.gz"))
    assert message.startswith(f"spec.dataset: file://{tmp_path}/train.csv.gz is not a valid")
    assert "is not a valid gzip file" in message
    assert "compressed byte" in message

    (tmp_path / "bad.csv").write_text('text,label\n"never closed,1\n' + "x,0\n" * 40000)
    message = permanent(spec_for(f"file://{tmp_path}/bad.csv"))
    assert "the CSV record starting at byte 11 cannot be read" in message


# --- training on them ----------------------------------------------------------------


EPOCHS = 30


def full_batch_job(tiny_model: Path, work: Path, dataset: dict[str, Any], **model: Any) -> Any:
    """The tiny model trained on the quickstart's 1,000 examples, all of them in every
    optimizer step: what it learns does not depend on the order examples arrive in,
    only (by float rounding) on how they are summed."""
    return {
        "model": {"uri": f"file://{tiny_model}", **model},
        "dataset": {"textColumns": ["text"], "maxSeqLength": 64, **dataset},
        "training": {
            "numTrainEpochs": EPOCHS,
            "perDeviceTrainBatchSize": 250,
            "gradientAccumulationSteps": 4,
            "learningRate": 1e-2,
            "warmupRatio": 0.0,
            "evalStrategy": "epoch",
            "loggingSteps": 1,
            # Sums in another order must agree to one answer in 200: fp32, not the bf16
            # autocast that `auto` picks on a CPU with AMX.
            "precision": "fp32",
        },
        "resources": {"nodes": 1, "gpusPerNode": 1},
        "checkpoints": {"uri": f"file://{work}/ckpt"},
        "output": {"uri": f"file://{work}/model"},
    }


def ftctl_local_accuracy(job: dict[str, Any], work: Path) -> float:
    import re
    import subprocess
    import sys

    import yaml

    path = work / "job.yaml"
    doc = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob"}
    path.write_text(yaml.safe_dump({**doc, "metadata": {"name": "formats"}, "spec": job}))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ftctl"), "run", "-f", str(path), "--local",
         "--metrics-port", "0"],
        cwd=work, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    found = re.search(rf"finished\. Evaluation at step {EPOCHS}: accuracy ([0-9.]+)", out)
    assert found, out[-4000:]
    return float(found.group(1))


def s3_accuracy(job: dict[str, Any], work: Path, s3: Any, prefix: str) -> float:
    """Trained by the trainer itself (a pod's launcher), from the S3 server."""
    import re

    from trainer_support import run_nodes

    job["checkpoints"]["uri"] = f"s3://ckpt/{prefix}"
    job["s3"] = {"endpoint": s3.endpoint, "forcePathStyle": True}
    log = run_nodes(job, work, nodes=1, extra=s3.env())[0].output()
    return float(re.findall(rf"eval at step {EPOCHS} \| accuracy ([0-9.]+)", log)[-1])


def test_saved_folders_train_to_the_accuracy_of_the_same_rows_in_jsonl(
    tiny_model: Path, tmp_path: Path, s3: Any
) -> None:
    from transformers import AutoConfig

    from trainer_support import upload_dir

    train, dev = quickstart("train"), quickstart("dev")
    (tmp_path / "jsonl").mkdir()
    for name, rows in (("train", train), ("dev", dev)):
        (tmp_path / "jsonl" / f"{name}.jsonl").write_bytes(as_jsonl(rows))
    split = {"trainSplit": "train", "evalSplit": "dev"}
    jsonl = ftctl_local_accuracy(
        full_batch_job(
            tiny_model, tmp_path / "jsonl", {"uri": f"file://{tmp_path}/jsonl/", **split}
        ),
        tmp_path / "jsonl",
    )
    client = s3.client()
    for bucket in ("data", "ckpt"):
        ensure_bucket(client, bucket)
    # A ClassLabel needs no numLabels or labelNames in the job: they come from it.
    labels = {"classlabel": {}, "strings": {"labelNames": ["negative", "positive"]}}
    accuracy: dict[str, float] = {"jsonl": jsonl}
    for kind, model in labels.items():
        folder = save_dict(tmp_path / kind, kind, train=train, validation=dev)
        local, remote = tmp_path / f"{kind}-ftctl", tmp_path / f"{kind}-s3"
        local.mkdir()
        accuracy[f"{kind} ftctl"] = ftctl_local_accuracy(
            full_batch_job(
                tiny_model, local, {"uri": f"file://{folder}", "evalSplit": "validation"}, **model
            ),
            local,
        )
        config = AutoConfig.from_pretrained(local / "model")
        assert config.id2label == {0: "negative", 1: "positive"}
        upload_dir(client, folder, "data", f"saved-{kind}")
        job = full_batch_job(
            tiny_model, remote, {"uri": f"s3://data/saved-{kind}/", "evalSplit": "validation"}
        )
        job["model"].update(model)
        accuracy[f"{kind} s3"] = s3_accuracy(job, remote, s3, f"formats-{kind}")
    print(f"\naccuracy: {accuracy}")
    # The same examples in every step; sums taken in another order may move one of
    # the 200 evaluation answers at most.
    for name, value in accuracy.items():
        assert abs(value - jsonl) <= 1 / 200, (name, accuracy)
    assert jsonl > 0.6  # it learned something (chance is about 0.5)


def test_a_killed_run_on_compressed_data_resumes_with_the_same_batches(
    tiny_model: Path, tmp_path: Path
) -> None:
    import os
    import re
    import signal

    import torch
    from controlplane import wait_for

    from trainer_support import load_weights, run_nodes, start_nodes, wait_nodes

    (tmp_path / "train.csv.gz").write_bytes(compressed(as_csv(quickstart("train")), "gz"))

    def job(name: str) -> dict[str, Any]:
        return {
            "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
            "dataset": {"uri": f"file://{tmp_path}/train.csv.gz", "textColumns": ["text"]},
            "training": {
                "numTrainEpochs": 4,
                "perDeviceTrainBatchSize": 8,
                "learningRate": 1e-3,
                "evalStrategy": "no",
            },
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "checkpoints": {"uri": f"file://{tmp_path}/{name}-ckpt", "saveSteps": 5},
            "output": {"uri": f"file://{tmp_path}/{name}-model"},
        }

    run_nodes(job("whole"), tmp_path / "whole", nodes=1)
    expected = load_weights(tmp_path / "whole-model")

    ckpt = tmp_path / "killed-ckpt"
    nodes = start_nodes(job("killed"), tmp_path / "killed", nodes=1)

    def committed() -> list[int]:
        return [int(p.parent.name[5:]) for p in ckpt.glob("step-*/manifest.json")]

    wait_for(lambda: max(committed(), default=0) >= 20, 300, "step 20 committed", every=0.05)
    os.killpg(nodes[0].proc.pid, signal.SIGKILL)
    wait_nodes(nodes)
    log = run_nodes(job("killed"), tmp_path / "resumed", nodes=1)[0].output()
    resumed_at = int(re.search(r"at step (\d+)", log).group(1))  # type: ignore[union-attr]
    assert 20 <= resumed_at < 500, log  # 4 epochs of 125 steps
    resumed = load_weights(tmp_path / "killed-model")
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_an_index_from_before_record_cuts_still_reads_each_example_once(tmp_path: Path) -> None:
    """A checkpoint's data plan written by an earlier trainer cut CSV files at any byte
    and read one line as one record; a run resumed from it goes on reading that way."""
    import itertools

    from finetune_trainer.data import DataIndex

    rows = quickstart("train")
    (tmp_path / "train.csv").write_bytes(as_csv(rows))
    spec = spec_for(f"file://{tmp_path}/train.csv")
    source = Source(spec)
    size = (tmp_path / "train.csv").stat().st_size
    bounds = [size * k // 8 for k in range(9)]
    key = source.train_files[0].key
    saved = {
        "units": [
            {"key": key, "fmt": "csv", "start": a, "end": b, "memory": 0}
            for a, b in itertools.pairwise(bounds)
        ],
        "counts": {},
        "eval": [],
    }
    units = DataIndex.from_json(saved).units
    index = count_units(source, units, list(range(len(units))))
    seen: Counter[Row] = Counter()
    for rank in range(2):
        stream_ = stream(source, index, Position(), 7, rank, 2)
        seen += Counter((e.texts[0], e.label) for e, _ in stream_)
    assert seen == Counter((r["text"], r["label"]) for r in rows)
    # A plan this trainer saves says how it cut, and reads back unchanged.
    assert DataIndex.from_json(index.to_json()).units == units
