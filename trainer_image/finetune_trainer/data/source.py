"""The dataset a job names: which files hold its training and evaluation splits,
and the reader for each file's format."""

from __future__ import annotations

from collections.abc import Iterator

from finetune_api.types import DatasetSpec, FineTuneJobSpec, HubSpec, ModelSpec

from ..errors import PermanentError
from ..storage import HubStore, ObjectInfo, Store, resolve_files
from .columnar import ColumnarReader
from .reads import CODECS
from .rows import Columns
from .saved import SavedSplit, is_saved, not_saved, saved_splits
from .text import TextReader
from .units import Example, Unit

MIN_SHARD_BYTES = 16 * 1024
FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def file_format(key: str, declared: str) -> str:
    if declared not in ("auto", "arrow"):
        return declared
    found = _known_format(key)
    if found is None:
        raise PermanentError(
            f"spec.dataset.format: cannot tell the format of {key!r} from its extension; "
            "set format to jsonl, csv, tsv or parquet"
        )
    return found


def _known_format(key: str) -> str | None:
    """The format of a file by its extension, under any compression extension."""
    name = key.lower()
    name = next((name[: -len(e)] for e in CODECS if name.endswith(e)), name)
    return next((fmt for ext, fmt in FORMATS.items() if name.endswith(ext)), None)


def _stem(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def hub_files(spec: DatasetSpec, hub: HubSpec | None) -> tuple[HubStore, list[ObjectInfo]]:
    """The data files of an hf:// dataset: those of its `config` folder, if set."""
    store = HubStore(spec.uri[len("hf://") :], spec.revision, hub)
    files = store.list_objects(spec.config or "")
    data = [f for f in files if _known_format(f.key) and f.size > 0]
    if not data and spec.config:
        folders = sorted({f.key.split("/", 1)[0] for f in store.list_objects() if "/" in f.key})
        raise PermanentError(
            f"spec.dataset.config: {spec.uri} has no data files under {spec.config}/; "
            f"its folders are: {', '.join(folders) or 'none'}"
        )
    return store, data


def split_files(files: list[ObjectInfo], split: str, fallback_all: bool) -> list[ObjectInfo]:
    """Files of a split: those whose name starts with the split name, or that lie in a
    folder named after it (the Hub's parquet layout: CONFIG/SPLIT/0000.parquet)."""
    chosen = [f for f in files if _stem(f.key).startswith(split) or split in f.key.split("/")[:-1]]
    if chosen:
        return chosen
    return files if fallback_all else []


def _sibling_uri(uri: str, parent: str) -> str:
    if uri.startswith("s3://"):
        bucket = uri[len("s3://") :].split("/", 1)[0]
        return f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/"
    scheme = uri.split("://", 1)[0]
    if scheme == "pvc":
        claim = uri[len("pvc://") :].split("/", 1)[0]
        return f"pvc://{claim}/{parent}"
    if scheme == "file":
        return f"file:///{parent}"
    raise PermanentError(
        f"spec.dataset.evalSplit: {uri} is a single file with no listable siblings; "
        "use evalFraction to hold out evaluation data"
    )


class Source:
    """The dataset's files and how to read examples out of them."""

    def __init__(self, spec: FineTuneJobSpec) -> None:
        self.spec: DatasetSpec = spec.dataset
        self.columns = Columns(spec)
        self.class_names: list[str] | None = None
        uri = self.spec.uri
        self.store: Store
        if uri.startswith("hf://"):
            self.store, files = hub_files(self.spec, spec.hub)
        else:
            self.store, files = resolve_files(uri, spec.s3)
        if not files:
            raise PermanentError(f"spec.dataset.uri: no data files found at {uri}")
        if is_saved(files):
            self._saved(saved_splits(self.store, files, uri))
        elif self.spec.format == "arrow" or _any_arrow(files):
            raise not_saved(uri, files)  # Arrow files are read only as save_to_disk wrote them
        else:
            self._split_by_name(files, spec)
        sizes = {f.key: f.size for f in [*self.train_files, *self.eval_files]}
        self.text = TextReader(self.store, sizes, self.columns)
        self.columnar = ColumnarReader(self.store, sizes, self.columns)

    def _split_by_name(self, files: list[ObjectInfo], spec: FineTuneJobSpec) -> None:
        uri = self.spec.uri
        # A single file is the training split, and evalSplit names a sibling file.
        single = len(files) == 1 and not uri.startswith("hf://")
        self.train_files = split_files(
            files, self.spec.train_split, fallback_all=self.spec.eval_split is None or single
        )
        self.eval_files: list[ObjectInfo] = []
        if self.spec.eval_split:
            pool = files
            if single:
                parent = files[0].key.rsplit("/", 1)[0] if "/" in files[0].key else ""
                _, pool = resolve_files(_sibling_uri(uri, parent), spec.s3)
            self.eval_files = split_files(pool, self.spec.eval_split, fallback_all=False)
            self.train_files = [f for f in self.train_files if f not in self.eval_files]
            if not self.eval_files:
                raise PermanentError(
                    f"spec.dataset.evalSplit: no file named {self.spec.eval_split}* next to "
                    f"the training data at {uri}"
                )
        if not self.train_files:
            raise PermanentError(
                f"spec.dataset.trainSplit: no file named {self.spec.train_split}* at {uri}"
            )

    def _saved(self, splits: dict[str, SavedSplit]) -> None:
        """A save_to_disk folder: a DatasetDict's splits by name, or one Dataset."""
        uri, ds = self.spec.uri, self.spec
        if "" in splits:  # one Dataset: all of it trains; evalFraction holds out
            if ds.eval_split:
                raise PermanentError(
                    f"spec.dataset.evalSplit: {uri} is one Dataset (save_to_disk of a "
                    "Dataset, not a DatasetDict); hold out with evalFraction, or save a "
                    "DatasetDict with both splits"
                )
            train, evaluation = splits[""], None
        else:
            train = self._named(splits, ds.train_split, "trainSplit")
            evaluation = self._named(splits, ds.eval_split, "evalSplit") if ds.eval_split else None
        self.train_files = train.files
        self.eval_files = evaluation.files if evaluation else []
        if train.features:
            self.columns.check(list(train.features), f"{train.folder or uri}/dataset_info.json")
        self.class_names = train.class_names(self.columns.label)

    def _named(self, splits: dict[str, SavedSplit], name: str, field_name: str) -> SavedSplit:
        if name not in splits:
            raise PermanentError(
                f"spec.dataset.{field_name}: no split {name!r} in {self.spec.uri}; "
                f"its splits are: {', '.join(splits)}"
            )
        return splits[name]

    def adopt_labels(self, model: ModelSpec) -> None:
        """Take the class names and number from a ClassLabel label column when the
        job gives no labelNames (numLabels, if given, must agree)."""
        names = self.class_names
        if not names or model.label_names:
            return
        if "num_labels" in model.model_fields_set and model.num_labels != len(names):
            raise PermanentError(
                f"spec.model.numLabels: {model.num_labels}, but the label column "
                f"{self.columns.label!r} is a ClassLabel with {len(names)} names "
                f"({', '.join(names)}); leave numLabels out to use them, or set it to {len(names)}"
            )
        model.num_labels, model.label_names = len(names), list(names)
        self.columns.num_labels, self.columns.label_names = len(names), list(names)

    # --- planning and reading ---------------------------------------------------------

    def _reader(self, fmt: str) -> TextReader | ColumnarReader:
        return self.columnar if fmt in ("parquet", "arrow") else self.text

    def plan_units(self, world_size: int, max_shard_bytes: int) -> list[Unit]:
        total = sum(f.size for f in self.train_files)
        # Many small units per rank balance the ranks; one rank needs no balancing.
        pieces = max(1, world_size) * 16
        target = max(MIN_SHARD_BYTES, min(max_shard_bytes, total // pieces))
        units: list[Unit] = []
        for f in sorted(self.train_files, key=lambda f: f.key):
            fmt = file_format(f.key, self.spec.format)
            units += self._reader(fmt).units(f, fmt, target)
        return units

    def records(
        self, unit: Unit, block_start: int | None, window: int | None = None
    ) -> Iterator[tuple[int, Example | None]]:
        """(offset, example) for each record of a unit, from block_start on.

        The offset is where the record starts (a byte offset, or a row number); it
        is what positions and hold-outs refer to. `window` is how many bytes the
        first ranged read of a plain text file asks for.
        """
        return self._reader(unit.fmt).records(unit, block_start, window)

    def read_eval_files(self) -> list[Example]:
        out: list[Example] = []
        for f in sorted(self.eval_files, key=lambda f: f.key):
            fmt = file_format(f.key, self.spec.format)
            for unit in self._reader(fmt).whole(f, fmt):
                out += [e for _, e in self.records(unit, None) if e is not None]
        return out


def _any_arrow(files: list[ObjectInfo]) -> bool:
    return any(f.key.lower().endswith(".arrow") for f in files)
