"""The pretrained model and its tokenizer, from hf://, s3:// or a local path.

Only safetensors weights are loaded: a model that ships nothing but pickled
weights (pytorch_model.bin) is refused rather than unpickled. Remote code runs
only when spec.model.trustRemoteCode is true.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from finetune_api.types import FineTuneJobSpec

from .errors import PermanentError
from .storage import open_store, pvc_root

log = logging.getLogger(__name__)


def fetch_model(spec: FineTuneJobSpec, work_dir: Path) -> str:
    """A local folder (or a Hub id) that from_pretrained can load."""
    uri = spec.model.uri
    if uri.startswith("hf://"):
        return uri[len("hf://") :]
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://") :].partition("/")
        return str(pvc_root() / claim / path)
    store = open_store(uri.rstrip("/"), spec.s3)
    store.check()
    files = store.list_objects()
    if not files:
        raise PermanentError(f"spec.model.uri: no model files under {uri}")
    dest = work_dir / "model"
    # A save_pretrained folder is a handful of files; fetch them side by side.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda o: store.download_file(o.key, dest / o.key), files))
    log.info("downloaded %d model files from %s", len(files), uri)
    return str(dest)


def _is_remote_code_refusal(error: Exception) -> bool:
    text = str(error)
    return "trust_remote_code" in text


def load(spec: FineTuneJobSpec, work_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) ready for sequence classification."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = fetch_model(spec, work_dir)
    m = spec.model
    trust = m.trust_remote_code
    revision = m.revision if m.uri.startswith("hf://") else None
    local = Path(source)
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise PermanentError(
            f"spec.model.uri: {m.uri} has only pickled weights (*.bin), which are never "
            "loaded; convert it to safetensors (save_pretrained(safe_serialization=True))"
        )
    extra: dict[str, Any] = {"num_labels": m.num_labels}
    if m.label_names:
        extra["id2label"] = dict(enumerate(m.label_names))
        extra["label2id"] = {name: i for i, name in enumerate(m.label_names)}
    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust, **extra
        )
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            revision=revision,
            trust_remote_code=trust,
            use_safetensors=True,
        )
    except ValueError as e:
        if _is_remote_code_refusal(e) and not trust:
            raise PermanentError(
                f"spec.model.trustRemoteCode: {m.uri} needs to run its own code; set "
                "trustRemoteCode: true only if you trust it"
            ) from None
        raise PermanentError(f"spec.model.uri: cannot load {m.uri}: {e}") from None
    except OSError as e:
        raise PermanentError(f"spec.model.uri: cannot load a model from {m.uri}: {e}") from None
    log.info(
        "loaded %s: %s, %.1fM parameters, %d labels",
        m.uri,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        m.num_labels,
    )
    return model, tokenizer
