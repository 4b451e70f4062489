"""Padding-free steps (packing.py) against the padded model they replace: the same
logits, the same gradients, the same real tokens (and the last layer's first tokens
only), and a saved model any transformers install loads. The tiny BERT has no
dropout, so the two are compared exactly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer import packing

PAIRS = [
    ("A short one.", "Two words."),
    ("A much longer first sentence with many more words than the others.", "And a reply."),
    ("Middle length sentence here.", "Its partner sentence, a little longer than that."),
]


def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (
        AutoModelForSequenceClassification.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )


def padded_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    firsts, seconds = zip(*PAIRS, strict=True)
    batch = dict(tokenizer(list(firsts), list(seconds), padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1, 1])
    return batch


def test_a_packed_batch_is_its_real_tokens_in_one_row(tiny_model: Path) -> None:
    _, tokenizer = load(tiny_model)
    batch = padded_batch(tokenizer)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == 3  # three lengths, so two of the rows are padded

    packed = packing.pack(batch, heads=2)

    rows = zip(batch["input_ids"].tolist(), lengths, strict=True)
    assert packed["input_ids"].tolist() == [[i for ids, n in rows for i in ids[:n]]]
    # Positions count from 0 in each example, as a padded forward numbers them.
    assert packed["position_ids"].tolist() == [[p for n in lengths for p in range(n)]]
    assert packed["token_type_ids"].shape == packed["input_ids"].shape
    assert packed["labels"].tolist() == [0, 1, 1]
    assert int(packing.real_tokens(packed)) == sum(lengths)
    assert int(packing.real_tokens(batch)) == sum(lengths)


# Ways to cut the batch of lengths 10, 20 and 18 into attention calls, by the cost
# of a call: each example in a call of its own; the two longer ones in one call
# (18 padded to 20) and the short one alone; all three in one padded call.
CUTS = {"each": (0.0, 3), "mixed": (200.0, 2), "one": (math.inf, 1)}


@pytest.mark.parametrize("cut", CUTS)
def test_packed_logits_and_gradients_are_the_padded_models(tiny_model: Path, cut: str) -> None:
    padded_model, tokenizer = load(tiny_model)
    packed_model, _ = load(tiny_model)
    assert packing.enable(packed_model)
    batch = padded_batch(tokenizer)
    labels = batch.pop("labels")
    cost, calls = CUTS[cut]
    packed = packing.pack(batch, packed_model.config.num_attention_heads, cost)
    assert len(packed["packed_groups"]) == calls, packed["packed_groups"]

    def step(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        model.zero_grad()
        logits = model(**inputs).logits
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach()

    # The last layer computes each example's first token only, the others all tokens.
    rows = []
    for layer in packed_model.bert.encoder.layer:
        layer.intermediate.register_forward_hook(lambda m, a, out: rows.append(out.shape[-2]))
    expected = step(padded_model, batch)
    torch.testing.assert_close(step(packed_model, packed), expected)
    tokens = int(batch["attention_mask"].sum())
    assert rows == [tokens] * (len(rows) - 1) + [len(PAIRS)]
    grads = dict(padded_model.named_parameters())
    for name, param in packed_model.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, grads[name].grad, msg=name)
    # Evaluation feeds padded batches to the same model: transformers' attention.
    with torch.no_grad():
        torch.testing.assert_close(packed_model(**batch).logits, expected)


def test_attention_calls_group_examples_of_near_lengths() -> None:
    lengths = [10, 50, 10, 11, 70, 12]
    # A call costs as much as 400 query-key pairs: padding 10 to 12 is cheaper than
    # another call, padding 50 to 70 is not.
    assert packing._plan(lengths, 400.0) == [[0, 2, 3, 5], [1], [4]]
    assert packing._plan(lengths, 0.0) == [[0, 2], [3], [5], [1], [4]]
    assert packing._plan(lengths, math.inf) == [[0, 2, 3, 5, 1, 4]]


def test_cpu_attention_dropout_drops_its_share_and_keeps_the_expectation() -> None:
    # On a CPU, training attention (dropout > 0) is packing's own, with its own draw.
    torch.manual_seed(0)
    dropout = 0.1
    keep, _ = packing._keep(torch.Size([1000, 1000]), dropout)
    assert abs(float((~keep).float().mean()) - dropout) < 2e-3
    query, key, value = (torch.randn(2, 2, 6, 4) for _ in range(3))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2]).view(2, 1, 1, 6)
    plain = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    draws = torch.stack(
        [packing._attend(query, key, value, mask, dropout, None) for _ in range(4000)]
    )
    assert not torch.allclose(draws[0], plain)  # one draw drops weights
    torch.testing.assert_close(draws.mean(0), plain, atol=0.02, rtol=0)
    # Padding keys count for nothing, and a seed fixes the draw.
    torch.manual_seed(1)
    once = packing._attend(query, key, value, mask, dropout, None)
    key[1, :, 4:], value[1, :, 4:] = 100.0, -100.0
    torch.manual_seed(1)
    torch.testing.assert_close(packing._attend(query, key, value, mask, dropout, None), once)


def test_cpu_hidden_dropout_is_drawn_the_same_way(tiny_model: Path) -> None:
    # The model's Dropout modules (embeddings, each layer's outputs, the classifier)
    # draw as the attention does on a CPU, and stay torch's elsewhere.
    model, _ = load(tiny_model)
    dropouts = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert dropouts
    assert packing.enable(model, "cpu")
    assert all(type(m) is packing.DrawnDropout for m in dropouts)
    elsewhere, _ = load(tiny_model)
    assert packing.enable(elsewhere, "cuda")
    assert not [m for m in elsewhere.modules() if isinstance(m, packing.DrawnDropout)]

    layer, x = packing.DrawnDropout(0.1), torch.randn(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    out = layer(x)
    kept = out != 0
    assert abs(1 - float(kept.float().mean()) - 0.1) < 2e-3
    torch.testing.assert_close(out[kept], x[kept] / 0.9, rtol=1e-4, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept / 0.9, rtol=1e-4, atol=0)  # the same mask
    torch.manual_seed(0)
    assert torch.equal(layer(x), out)  # a seed fixes the draw
    assert torch.equal(layer.eval()(x), x)


def test_the_saved_model_loads_without_the_trainer(tiny_model: Path, tmp_path: Path) -> None:
    model, _ = load(tiny_model)
    assert packing.enable(model)
    model.save_pretrained(tmp_path / "out", safe_serialization=True)
    assert packing.NAME not in (tmp_path / "out" / "config.json").read_text()
    reloaded, _ = load(tmp_path / "out")
    assert reloaded.config._attn_implementation != packing.NAME


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_other_models_are_left_padded(model_type: str) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        model_type,
        vocab_size=64,
        hidden_size=16,
        dim=16,
        hidden_dim=32,
        intermediate_size=32,
        num_hidden_layers=1,
        n_layers=1,
        num_attention_heads=2,
        n_heads=2,
    )
    model = AutoModelForSequenceClassification.from_config(config)
    before = model.config._attn_implementation

    assert not packing.enable(model)
    assert model.config._attn_implementation == before


def test_a_bert_that_brings_its_own_code_is_left_padded(tiny_model: Path) -> None:
    from transformers import BertForSequenceClassification

    class OwnCode(BertForSequenceClassification):  # as trustRemoteCode would load one
        pass

    model = OwnCode.from_pretrained(tiny_model)
    assert model.config.model_type == "bert"
    assert not packing.enable(model)
    assert model.config._attn_implementation != packing.NAME
