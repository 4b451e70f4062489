"""Streaming data from a real S3 server: sharding, exactly-once epochs, cheap resume."""

from __future__ import annotations

import csv
import http.server
import io
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from finetune_api.types import FineTuneJobSpec
from finetune_trainer.data import (
    BLOCK,
    MARGIN,
    Position,
    Source,
    count_units,
    step_allocations,
    stream,
)
from finetune_trainer.errors import PermanentError
from trainer_support import SHARED_DATA, ensure_bucket

WAIMAI = SHARED_DATA / "chinese-sentiment" / "waimai_10k.csv"


@pytest.fixture
def s3_env(s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    ensure_bucket(s3.client(), "data")
    return s3


def spec_for(uri: str, s3: Any, fmt: str, text: list[str], label: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"uri": "file:///unused"},
            "dataset": {"uri": uri, "format": fmt, "textColumns": text, "labelColumn": label},
            "checkpoints": {"uri": "s3://ckpt/unused"},
            "s3": {"endpoint": s3.endpoint, "forcePathStyle": True},
        }
    )


def waimai_rows() -> list[tuple[tuple[str, ...], int]]:
    with WAIMAI.open(encoding="utf-8", newline="") as f:
        return [((r["review"],), int(r["label"])) for r in csv.DictReader(f) if r["review"]]


def epoch_examples(
    spec: FineTuneJobSpec,
    world: int,
    shard_bytes: int,
    epoch: int,
    largest_unit: list[int] | None = None,
) -> list[Counter[tuple[tuple[str, ...], int]]]:
    source = Source(spec)
    units = source.plan_units(world, shard_bytes)
    index = count_units(source, units, list(range(len(units))))
    if largest_unit is not None:
        largest_unit.append(max(index.counts.values()))
    per_rank = []
    for rank in range(world):
        seen = Counter(
            (e.texts, e.label)
            for e, _ in stream(source, index, Position(epoch=epoch), 42, rank, world)
        )
        per_rank.append(seen)
    return per_rank


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_see_every_csv_example_exactly_once(s3_env: Any, epoch: int) -> None:
    s3_env.client().upload_file(str(WAIMAI), "data", "waimai/waimai_10k.csv")
    spec = spec_for("s3://data/waimai/*.csv", s3_env, "csv", ["review"], "label")
    largest: list[int] = []
    rank0, rank1 = epoch_examples(
        spec, world=2, shard_bytes=64 * 1024, epoch=epoch, largest_unit=largest
    )
    expected = Counter(waimai_rows())
    assert len(expected) > 10000
    assert rank0 + rank1 == expected
    # Balanced: the ranks' shares differ by less than one unit's examples.
    assert abs(sum(rank0.values()) - sum(rank1.values())) <= largest[0]
    assert largest[0] < 0.1 * sum(expected.values())


def test_parquet_and_jsonl_shards_are_read_exactly_once(s3_env: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = waimai_rows()[:3000]
    table = pa.table({"text": [r[0][0] for r in rows], "label": [r[1] for r in rows]})
    client = s3_env.client()
    for part in range(3):
        buf = io.BytesIO()
        pq.write_table(table.slice(part * 1000, 1000), buf, row_group_size=128)
        client.put_object(Bucket="data", Key=f"pq/train-{part}.parquet", Body=buf.getvalue())
    spec = spec_for("s3://data/pq/", s3_env, "auto", ["text"], "label")
    rank0, rank1 = epoch_examples(spec, world=2, shard_bytes=1 << 20, epoch=0)
    assert rank0 + rank1 == Counter(rows)

    lines = "".join(
        json.dumps({"text": t[0], "label": y}, ensure_ascii=False) + "\n" for t, y in rows
    )
    client.put_object(Bucket="data", Key="jsonl/train.jsonl", Body=lines.encode())
    spec = spec_for("s3://data/jsonl/train.jsonl", s3_env, "auto", ["text"], "label")
    rank0, rank1 = epoch_examples(spec, world=2, shard_bytes=64 * 1024, epoch=0)
    assert rank0 + rank1 == Counter(rows)


class CountingStore:
    """Wraps the real S3 store and counts the bytes each request asks the server to
    send: a ranged GET without an end is sent to the end of the object, however
    little of it the reader uses."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sizes = {o.key: o.size for o in inner.list_objects()}
        self.bytes_sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_bytes(self, key: str) -> bytes:
        data: bytes = self.inner.get_bytes(key)
        self.bytes_sent += len(data)
        return data

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Any:
        self.bytes_sent += min(self.sizes[key], self.sizes[key] if end is None else end) - start
        return self.inner.read_range(key, start, end)


def test_resume_cost_does_not_grow_with_progress(s3_env: Any) -> None:
    # One 10 MB file: replaying the stream up to example 190,000 would read nearly all of it.
    rows = waimai_rows()
    out = io.StringIO()
    out.write("label,review\n")
    for i in range(200_000):
        text, label = rows[i % len(rows)]
        out.write(f'{label},"{i} {text[0]}"\n')
    data = out.getvalue().encode()
    s3_env.client().put_object(Bucket="data", Key="big/train.csv", Body=data)
    spec = spec_for("s3://data/big/train.csv", s3_env, "csv", ["review"], "label")
    source = Source(spec)
    units = source.plan_units(1, 64 * 1024 * 1024)
    index = count_units(source, units, list(range(len(units))))

    positions = {}
    for n, (_, pos) in enumerate(stream(source, index, Position(), 1, 0, 1), start=1):
        if n in (1_000, 190_000):
            positions[n] = pos

    costs = {}
    for n, pos in positions.items():
        resumed = Source(spec)
        counting = CountingStore(resumed.store)
        resumed.store = counting
        first = next(stream(resumed, index, pos, 1, 0, 1))
        costs[n] = counting.bytes_sent
        assert first is not None
    # Each resume has the server send about one block, wherever it is: the block's
    # share of the file with a quarter to spare (twice that if the block ran long).
    block_bytes = len(data) * (BLOCK + 1) // 200_000
    bound = 3 * (block_bytes * 5 // 4 + MARGIN)
    assert costs[190_000] <= bound, costs
    assert costs[1_000] <= bound, costs
    assert len(data) > 8 * bound


@pytest.mark.parametrize(("world", "fmt"), [(1, "csv"), (2, "csv"), (1, "parquet"), (2, "parquet")])
def test_a_file_sorted_by_label_is_mixed_all_through_the_epoch(
    s3_env: Any, world: int, fmt: str
) -> None:
    # The food-delivery reviews come sorted: 4,000 positive, then 7,987 negative.
    if fmt == "csv":
        s3_env.client().upload_file(str(WAIMAI), "data", "sorted/waimai.csv")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # One row group, as small datasets on the Hub often are.
        rows = [{"review": t[0], "label": y} for t, y in waimai_rows()]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=len(rows))
        s3_env.client().put_object(Bucket="data", Key="sorted/waimai.parquet", Body=buf.getvalue())
    spec = spec_for(f"s3://data/sorted/waimai.{fmt}", s3_env, fmt, ["review"], "label")
    labels = [y for _, y in waimai_rows()]
    assert labels[:4000] == [1] * 4000
    share = sum(labels) / len(labels)
    window = 256
    for epoch, rank in itertools.product((0, 1), range(world)):
        source = Source(spec)
        units = source.plan_units(world, 64 * 1024 * 1024)
        index = count_units(source, units, list(range(len(units))))
        got = [e.label for e, _ in stream(source, index, Position(epoch=epoch), 7, rank, world)]
        # Every stretch of 256 examples a rank trains on, start to end of the epoch,
        # holds about the file's share of positives (a full shuffle: 0.33 +- 0.03).
        shares = [sum(got[i : i + window]) / window for i in range(0, len(got) - window, window)]
        assert min(shares) > share - 0.12, (epoch, rank, shares)
        assert max(shares) < share + 0.12, (epoch, rank, shares)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_resumed_stream_continues_exactly_where_it_stopped(s3_env: Any, fmt: str) -> None:
    if fmt == "csv":
        s3_env.client().upload_file(str(WAIMAI), "data", "resume/waimai.csv")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{"review": t[0], "label": y} for t, y in waimai_rows()]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=5000)
        s3_env.client().put_object(Bucket="data", Key="resume/waimai.parquet", Body=buf.getvalue())
    spec = spec_for(f"s3://data/resume/waimai.{fmt}", s3_env, fmt, ["review"], "label")
    source = Source(spec)
    units = source.plan_units(2, 64 * 1024)
    index = count_units(source, units, list(range(len(units))))
    full = [(e, p) for e, p in stream(source, index, Position(), 3, 1, 2)]
    for cut in (1, BLOCK - 1, BLOCK, len(full) // 2, len(full) - 1):
        rest = [e for e, _ in stream(Source(spec), index, full[cut - 1][1], 3, 1, 2)]
        assert rest == [e for e, _ in full[cut:]], cut


def test_interrupted_upload_is_never_used(s3_env: Any, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from controlplane import wait_for

    from finetune_api.types import S3Spec
    from finetune_trainer.checkpoint import CheckpointStore

    client = s3_env.client()
    ensure_bucket(client, "ckpt")
    settings = S3Spec(endpoint=s3_env.endpoint, force_path_style=True)
    store = CheckpointStore("s3://ckpt/interrupted", settings, keep=3)
    good = tmp_path / "good"
    good.mkdir()
    (good / "weights.bin").write_bytes(b"good weights")
    store.commit(good, 10)

    big = tmp_path / "big"
    big.mkdir()
    (big / "a-small.bin").write_bytes(b"uploaded before the kill")
    (big / "b-large.bin").write_bytes(os.urandom(192 * 1024 * 1024))
    uploader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; "
                "from finetune_api.types import S3Spec; "
                "from finetune_trainer.checkpoint import CheckpointStore; "
                "s = CheckpointStore('s3://ckpt/interrupted', "
                f"S3Spec(endpoint={s3_env.endpoint!r}, force_path_style=True)); "
                f"s.commit(Path({str(big)!r}), 20)"
            ),
        ],
        start_new_session=True,
    )

    def multipart_started() -> bool:
        ups = client.list_multipart_uploads(Bucket="ckpt").get("Uploads", [])
        return any(u["Key"].startswith("interrupted/") for u in ups)

    wait_for(multipart_started, 60, "the uploader to start a multipart upload", every=0.02)
    os.killpg(uploader.pid, signal.SIGKILL)
    uploader.wait()

    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket="ckpt", Prefix="interrupted/")["Contents"]
    ]
    assert "interrupted/step-000000020/a-small.bin" in keys  # the partial checkpoint exists
    assert [c.step for c in store.committed()] == [10]  # ...but is not a checkpoint
    restored = store.restore(tmp_path / "restore")
    assert restored is not None
    assert restored[0].step == 10
    assert (restored[1] / "weights.bin").read_bytes() == b"good weights"

    assert store.abort_stale_uploads() >= 1
    assert not multipart_started()
    # The next commit clears the leftovers of the dead upload.
    store.commit(good, 30)
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket="ckpt", Prefix="interrupted/")["Contents"]
    ]
    assert not [k for k in keys if k.startswith("interrupted/step-000000020/")]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A static file server that honours `Range: bytes=N-` and `bytes=N-M`, as web
    servers and CDNs do, and counts the bytes it sends."""

    ranges_served = 0
    bytes_sent = 0

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        header = self.headers.get("Range")
        if not header or self.command != "GET":
            return super().send_head()
        path = Path(self.translate_path(self.path))
        first, _, last = header.removeprefix("bytes=").partition("-")
        size = path.stat().st_size
        start, end = int(first), min(size, int(last) + 1 if last else size)
        with path.open("rb") as f:
            f.seek(start)
            body = f.read(end - start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        RangeHandler.ranges_served += 1
        RangeHandler.bytes_sent += len(body)
        return io.BytesIO(body)


def test_https_style_files_are_streamed_with_range_requests(tmp_path: Path) -> None:
    import functools
    import threading

    from trainer_support import MRPC

    handler = functools.partial(RangeHandler, directory=str(MRPC))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/train.tsv"
        spec = FineTuneJobSpec.model_validate(
            {
                "model": {"uri": "file:///unused"},
                "dataset": {
                    "uri": url,
                    "format": "tsv",
                    "textColumns": ["#1 String", "#2 String"],
                    "labelColumn": "Quality",
                },
                "checkpoints": {"uri": "file:///unused"},
            }
        )
        rank0, rank1 = epoch_examples(spec, world=2, shard_bytes=64 * 1024, epoch=0)
    finally:
        server.shutdown()
    with (MRPC / "train.tsv").open(encoding="utf-8-sig") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    expected = Counter(((r[3], r[4]), int(r[0])) for r in rows)
    assert rank0 + rank1 == expected
    assert RangeHandler.ranges_served > 4  # units were fetched by range, not whole
    # The counting pass and the epoch each need the file once; blocks are asked for
    # with an end, so the server is not made to send the rest of the file each time.
    size = (MRPC / "train.tsv").stat().st_size
    assert RangeHandler.bytes_sent < 3 * size, (RangeHandler.bytes_sent, size)


def test_parquet_row_groups_are_fetched_by_range(s3_env: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = waimai_rows()[:4000]
    buf = io.BytesIO()
    table = pa.table({"text": [r[0][0] for r in rows], "label": [r[1] for r in rows]})
    pq.write_table(table, buf, row_group_size=250)  # 16 row groups, 16 units
    size = len(buf.getvalue())
    s3_env.client().put_object(Bucket="data", Key="pqrange/train.parquet", Body=buf.getvalue())
    spec = spec_for("s3://data/pqrange/train.parquet", s3_env, "auto", ["text"], "label")
    source = Source(spec)
    counting = CountingStore(source.store)
    source.store = counting
    units = source.plan_units(2, 1 << 20)
    assert len(units) == 16
    index = count_units(source, units, list(range(len(units))))
    seen = Counter(
        (e.texts, e.label) for r in range(2) for e, _ in stream(source, index, Position(), 5, r, 2)
    )
    assert seen == Counter(rows)
    # The counting pass and one epoch each read every row group once (plus the
    # footer), not the whole file once per row group.
    assert counting.bytes_sent < 3 * size, (counting.bytes_sent, size)


@pytest.mark.parametrize(
    ("shares", "per_rank"),
    [([100, 100], 8), ([110, 90], 8), ([0, 37], 4), ([5, 60, 3, 17], 4), ([1, 1], 8)],
)
def test_every_step_but_the_last_has_the_full_global_batch(
    shares: list[int], per_rank: int
) -> None:
    plan = list(step_allocations(shares, per_rank))
    batch = per_rank * len(shares)
    assert len(plan) == -(-sum(shares) // batch)
    assert all(sum(step) == batch for step in plan[:-1])
    # Each rank gives exactly its share, never more than it has left.
    assert [sum(step[r] for step in plan) for r in range(len(shares))] == shares


def _hub_glue(root: Path) -> list[dict[str, Any]]:
    """nyu-mll/glue laid out as the Hub has it (CONFIG/SPLIT-00000-of-00001.parquet):
    MRPC's train and dev from the shared data, and a second config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer_support import MRPC

    def table(name: str) -> list[dict[str, Any]]:
        with (MRPC / name).open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [
            {"sentence1": r["#1 String"], "sentence2": r["#2 String"], "label": int(r["Quality"])}
            for r in rows
        ]

    repo = root / "nyu-mll" / "glue"
    (repo / "mrpc").mkdir(parents=True)
    (repo / "cola").mkdir()
    (repo / "README.md").write_text("---\nconfigs: [mrpc, cola]\n---\n")
    train, dev = table("train.tsv"), table("dev.tsv")
    for name, rows in (("train", train), ("validation", dev)):
        pq.write_table(
            pa.Table.from_pylist(rows),
            repo / "mrpc" / f"{name}-00000-of-00001.parquet",
            row_group_size=250,
        )
    pq.write_table(
        pa.Table.from_pylist([{"sentence": "a", "label": 1}]),
        repo / "cola" / "train-00000-of-00001.parquet",
    )
    return train + [{"split": "dev", **r} for r in dev]


def online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point the Hub client at the stand-in. The test suite runs with HF_HUB_OFFLINE=1,
    which huggingface_hub reads once at import, so its flag is turned off too."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def glue_mrpc(**dataset: str) -> dict[str, Any]:
    """A job spec reading GLUE's MRPC config from the (stand-in) Hub."""
    return {
        "model": {"uri": "file:///unused"},
        "dataset": {
            "uri": "hf://nyu-mll/glue",
            "config": "mrpc",
            "textColumns": ["sentence1", "sentence2"],
            "labelColumn": "label",
            **dataset,
        },
        "checkpoints": {"uri": "file:///unused"},
    }


def test_hf_datasets_stream_from_the_hub_by_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hub cannot be reached here: hub_standin serves its tree and resolve API
    # (and a CDN on another origin) from a local folder laid out like nyu-mll/glue.
    from hub_standin import Hub

    rows = _hub_glue(tmp_path / "hub")
    hub = Hub({"nyu-mll/glue": tmp_path / "hub" / "nyu-mll" / "glue"}).start()
    try:
        online(monkeypatch, hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
        spec = FineTuneJobSpec.model_validate(glue_mrpc(evalSplit="validation"))
        rank0, rank1 = epoch_examples(spec, world=2, shard_bytes=64 * 1024, epoch=0)
        evaluation = Source(spec).read_eval_files()
    finally:
        hub.stop()
    train = [r for r in rows if "split" not in r]
    dev = [r for r in rows if "split" in r]
    assert rank0 + rank1 == Counter(((r["sentence1"], r["sentence2"]), r["label"]) for r in train)
    assert [(e.texts, e.label) for e in evaluation] == [
        ((r["sentence1"], r["sentence2"]), r["label"]) for r in dev
    ]
    # The API got the token; the CDN got ranged reads and never the token.
    api = [s for s in hub.seen if s.server == "api" and "nyu-mll/glue" in s.path]
    cdn = [s for s in hub.seen if s.server == "cdn"]
    assert api
    assert all(s.authorized for s in api)
    assert cdn
    assert all(s.range and not s.authorized for s in cdn)
    assert not any("cola" in s.path for s in cdn)
    train_file = tmp_path / "hub" / "nyu-mll" / "glue" / "mrpc" / "train-00000-of-00001.parquet"
    sent = sum(
        int(s.range.split("-")[1]) + 1 - int(s.range.split("=")[1].split("-")[0])
        for s in cdn
        if s.range and "train" in s.path
    )
    assert sent < 4 * train_file.stat().st_size  # by row group, not the file per unit


def test_an_unavailable_hub_is_retried_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer.errors import StorageUnavailable
    from hub_standin import Hub

    _hub_glue(tmp_path / "hub")
    # hub_standin stands in for the Hugging Face Hub, which this machine cannot reach;
    # the trainer's real Hub client talks to it. Three 503s (an overloaded Hub, or one
    # restarting), then it answers.
    hub = Hub({"nyu-mll/glue": tmp_path / "hub" / "nyu-mll" / "glue"}, unavailable=3).start()
    doc = glue_mrpc()
    try:
        online(monkeypatch, hub.endpoint)
        assert Source(FineTuneJobSpec.model_validate(doc)).train_files
        refused = [s for s in hub.seen if s.server == "api"][:3]
        assert len(refused) == 3
        # Down for longer than the job's budget: a retryable failure that says so.
        hub.unavailable = -1
        doc["hub"] = {"retrySeconds": 2}
        began = time.monotonic()
        with pytest.raises(StorageUnavailable) as gone:
            Source(FineTuneJobSpec.model_validate(doc))
        gave_up_after = time.monotonic() - began
    finally:
        hub.stop()
    # The budget bounds every retry, the Hub client's own included (it would retry each
    # request 5 times itself, for 23 s, before the budget saw a failure).
    assert gave_up_after < 2 + 5, gave_up_after
    message = str(gone.value)
    assert message.startswith(
        "Hub unavailable: cannot list hf://nyu-mll/glue (503 from the server); still failing"
    ), message
    assert f"(spec.hub.retrySeconds: 2); check that the Hub at {hub.endpoint} is up" in message
    # Nothing listens there any more: refused connections are waited out the same way.
    began = time.monotonic()
    with pytest.raises(StorageUnavailable) as refused_connection:
        Source(FineTuneJobSpec.model_validate(doc))
    assert time.monotonic() - began < 2 + 5
    message = str(refused_connection.value)
    assert message.startswith("Hub unavailable: cannot list hf://nyu-mll/glue (Connect"), message
    assert "(spec.hub.retrySeconds: 2)" in message


@pytest.mark.parametrize(
    ("dataset", "field_name", "says"),
    [
        ({"uri": "hf://nyu-mll/nope"}, "spec.dataset.uri", "no dataset nyu-mll/nope"),
        ({"uri": "hf://nyu-mll/glue", "config": "sst2"}, "spec.dataset.config", "cola, mrpc"),
        (
            {"uri": "hf://nyu-mll/glue", "config": "mrpc", "revision": "v9"},
            "spec.dataset.revision",
            "no revision 'v9'",
        ),
    ],
)
def test_hf_dataset_mistakes_name_the_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dataset: dict[str, str],
    field_name: str,
    says: str,
) -> None:
    from hub_standin import Hub

    _hub_glue(tmp_path / "hub")
    hub = Hub({"nyu-mll/glue": tmp_path / "hub" / "nyu-mll" / "glue"}).start()
    try:
        online(monkeypatch, hub.endpoint)
        spec = FineTuneJobSpec.model_validate(
            {
                "model": {"uri": "file:///unused"},
                "dataset": {**dataset, "textColumns": ["sentence1"], "labelColumn": "label"},
                "checkpoints": {"uri": "file:///unused"},
            }
        )
        with pytest.raises(PermanentError) as error:
            Source(spec)
    finally:
        hub.stop()
    assert str(error.value).startswith(field_name + ":"), error.value
    assert says in str(error.value)


def test_an_hf_dataset_while_offline_says_how_to_reach_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from hub_standin import Hub

    _hub_glue(tmp_path / "hub")
    hub = Hub({"nyu-mll/glue": tmp_path / "hub" / "nyu-mll" / "glue"}).start()
    try:
        # hub_standin stands in for the Hugging Face Hub, which this machine cannot reach;
        # it is up, but HF_HUB_OFFLINE=1 (which huggingface_hub reads at import), so the
        # trainer's real Hub client must not send it anything.
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(PermanentError) as error:
            Source(FineTuneJobSpec.model_validate(glue_mrpc()))
    finally:
        hub.stop()
    assert str(error.value) == (
        "spec.dataset.uri: hf://nyu-mll/glue is on the Hugging Face Hub but HF_HUB_OFFLINE is "
        "set; copy the dataset to s3:// or unset HF_HUB_OFFLINE"
    )
    assert hub.seen == []
