"""Padding-free steps: each micro-batch's real tokens in one row, no padding.

A BERT step is mostly matrix multiplies over tokens: the attention projections,
the feed-forward layers, layer norms and dropout all treat each token on its own.
With per-batch padding a quarter of MRPC's tokens are padding, and all of that
work is thrown away. Here the training batch is packed instead: the real tokens of
its examples are laid out in one row (input_ids of shape [1, tokens]), each with
its position within its own example, so the per-token layers only see real tokens.

Attention is the one place where examples must not see each other, and it needs
no padding either: each example attends over its own tokens only. The batch's
examples are cut into a few attention calls by length (_plan): examples of near
lengths share a call, padded to the longest of them and masked as padded attention
is, where the padding costs less than another call would. The encoder's output is
padded again (zeros where padding was), so the pooler and the classifier see the
shape they always see. Without dropout the arithmetic is the padded model's: tests
compare logits and trained weights with the padded model's. The order of the data
is untouched, unlike length grouping, so accuracy is that of padded training; only
the padding's wasted work goes. On a CPU, dropout's masks (the attention's and the
hidden states') are drawn here, more cheaply than torch's draw (_keep); on a GPU the
batch stays one call through torch's attention, with torch's dropout.

A sequence classifier reads one token per example: the pooler takes each example's
first token ([CLS]) from the last layer. So in training the last layer computes that
token only (_first_tokens_layer): its query, its attention over its example's keys
and values, its feed-forward. The other tokens' last-layer outputs, which nothing
reads, are not computed; the logits and every gradient are those of the full layer.

It applies to models whose attention runs through transformers' AttentionInterface
and whose positions count from 0 in each example: BERT and its distillations such
as MiniLM (model_type "bert"). Other models train padded, and the start-up log says
so. Evaluation stays padded: without the packed layout the attention below is
transformers' own SDPA attention.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

NAME = "finetune_packed"
MODEL_TYPES = frozenset({"bert"})


def supports(model: Any) -> bool:
    """Whether `model` can train padding-free (see the module docstring): transformers'
    own BERT code, not a model that brings its own (trustRemoteCode) under that name."""
    config = getattr(model, "config", None)
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    builtin = type(model).__module__.startswith("transformers.")
    return getattr(config, "model_type", None) in MODEL_TYPES and encoder is not None and builtin


# The cost of one more attention call, in attention weights (query-key pairs per
# head): an example's own call costs this plus its length squared. On CPU a call's
# fixed work is small next to the work per weight (docs/benchmarks.md, Padding-free
# steps). On a GPU launches cost more and fused kernels make padding cheap, so there
# the batch stays one padded call (an infinite cost).
CPU_CALL_COST = 400.0


def device_call_cost(device_type: str) -> float:
    """The cost of one more attention call on this kind of device."""
    return CPU_CALL_COST if device_type == "cpu" else math.inf


@dataclass(frozen=True)
class Packer:
    """Packs a tokenizer's padded batches for one model (its head count) on one
    kind of device (the cost of an attention call there)."""

    heads: int
    call_cost: float

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return pack(batch, self.heads, self.call_cost)


def enable(model: Any, device_type: str = "cpu") -> Packer | None:
    """Route `model`'s attention through the packed path; None if it cannot be."""
    if not supports(model):
        return None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # padded calls: SDPA's mask
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:  # refused (transformers logs why)
        return None
    model.base_model.encoder.register_forward_hook(_repad, with_kwargs=True)
    if device_type == "cpu":
        for module in model.modules():
            if type(module) is torch.nn.Dropout:
                module.__class__ = DrawnDropout
    if _reads_first_tokens(model):
        last = model.base_model.encoder.layer[-1]
        last.forward = types.MethodType(_first_tokens_layer, last)
    return Packer(model.config.num_attention_heads, device_call_cost(device_type))


def pack(
    batch: dict[str, torch.Tensor], heads: int, call_cost: float = CPU_CALL_COST
) -> dict[str, Any]:
    """A tokenizer's padded batch as one row of real tokens plus its layout:
    packed_index (where each real token sits in the flattened [batch, length] grid),
    packed_mask (the attention mask) and the attention calls (_plan, _layout). Labels
    are kept as they are."""
    mask = batch["attention_mask"]
    length = mask.shape[1]
    index = mask.reshape(-1).nonzero().squeeze(1)
    packed: dict[str, Any] = {
        key: batch[key].reshape(-1).index_select(0, index).unsqueeze(0)
        for key in ("input_ids", "token_type_ids")
        if key in batch
    }
    # The position a padded forward gives each token: its column in the grid.
    packed["position_ids"] = (index % length).unsqueeze(0)
    packed["packed_index"] = index
    packed["packed_mask"] = mask.bool()
    lengths = mask.sum(1).tolist()
    groups = _plan(lengths, call_cost)
    packed.update(_layout(lengths, groups, heads))
    packed.update(_first_tokens(lengths))
    if "labels" in batch:
        packed["labels"] = batch["labels"]
    return packed


def _plan(lengths: list[int], call_cost: float) -> list[list[int]]:
    """The batch's examples in attention calls: by length, each call padded to its
    longest, grouped to minimise the attention weights computed plus `call_cost` per
    call. Attention is per example, so grouping never changes what a token sees."""
    order = sorted(range(len(lengths)), key=lambda e: lengths[e])
    best: list[tuple[float, int]] = [(0.0, 0)]  # (cost of the first j, where its last call starts)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]] ** 2
        best.append(min((best[i][0] + (j - i) * longest + call_cost, i) for i in range(j)))
    groups, j = [], len(order)
    while j:
        i = best[j][1]
        groups.append(order[i:j])
        j = i
    return groups[::-1]


def _layout(lengths: list[int], groups: list[list[int]], heads: int) -> dict[str, Any]:
    """Where the calls' [examples, heads, length] grids, laid end to end, read the
    packed row's [tokens, heads] cells (packed_gather; a padding cell reads its
    example's first token, which its mask hides), where each cell's result lands
    (packed_back), the grids' masks (packed_group_mask) and their shapes
    (packed_groups: examples, length, whether any is padded).

    Written in numpy, not torch: it runs in the data thread, where these steps as
    torch operations slowed the training thread's steps by a third on a CPU."""
    starts = np.cumsum([0, *lengths])
    per_head = np.arange(heads).reshape(1, heads, 1)
    gather, masks, cell_masks, shapes = [], [], [], []
    for group in groups:
        count = np.array([lengths[e] for e in group])
        width = int(count.max())
        column = np.arange(width)
        real = column.reshape(1, width) < count.reshape(-1, 1)  # [examples, length]
        token = starts[group].reshape(-1, 1) + np.where(real, column, 0)
        gather.append((token[:, None, :] * heads + per_head).reshape(-1))
        masks.append(real.reshape(-1))
        cell_masks.append(np.repeat(real[:, None, :], heads, axis=1).reshape(-1))
        shapes.append((len(group), width, bool((~real).any())))
    cells, real_cells = np.concatenate(gather), np.concatenate(cell_masks)
    back = np.empty(int(starts[-1]) * heads, dtype=np.int64)
    back[cells[real_cells]] = np.flatnonzero(real_cells)
    return {
        "packed_groups": tuple(shapes),
        "packed_gather": torch.from_numpy(cells),
        "packed_back": torch.from_numpy(back),
        "packed_group_mask": torch.from_numpy(np.concatenate(masks)),
    }


def _first_tokens(lengths: list[int]) -> dict[str, torch.Tensor]:
    """Each example's first token in the packed row (packed_first), and its example's
    tokens as a padded [examples, longest] grid (packed_first_keys; padding reads the
    first token, which packed_first_mask hides): the last layer's one attention call."""
    count = np.array(lengths)
    starts = np.cumsum(count) - count
    real = np.arange(int(count.max())).reshape(1, -1) < count.reshape(-1, 1)
    keys = starts.reshape(-1, 1) + np.where(real, np.arange(real.shape[1]), 0)
    return {
        "packed_first": torch.from_numpy(starts),
        "packed_first_keys": torch.from_numpy(keys.reshape(-1)),
        "packed_first_mask": torch.from_numpy(real),
    }


def real_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """The number of real (not padding) tokens in a packed or a padded batch."""
    mask: torch.Tensor = (
        batch["packed_mask"] if "packed_index" in batch else batch["attention_mask"]
    )
    return mask.sum()


def _scatter(tokens: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[tokens, ...] -> [batch, length, ...]: each token at its place, zeros at padding."""
    batch, length = mask.shape
    grid = tokens.new_zeros(batch * length, *tokens.shape[1:]).index_copy(0, index, tokens)
    return grid.view(batch, length, *tokens.shape[1:])


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_groups: tuple[tuple[int, int, bool], ...] | None = None,
    packed_gather: torch.Tensor | None = None,
    packed_back: torch.Tensor | None = None,
    packed_group_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_groups is None or packed_gather is None or packed_back is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert packed_group_mask is not None
    heads, tokens, width = query.shape[1:]
    sizes = [n * heads * length for n, length, _ in packed_groups]

    def cells(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # [1, heads, tokens, width] -> each call's [examples, heads, length, width].
        # split, not slicing: its backward is one concatenation, where each slice's
        # backward would fill a zero tensor of the whole batch.
        rows = x[0].transpose(0, 1).reshape(tokens * heads, width)
        return torch.split(rows.index_select(0, packed_gather), sizes)

    masks = torch.split(packed_group_mask, [n * length for n, length, _ in packed_groups])
    outs = []
    for (n, length, padded), q, k, v, real in zip(
        packed_groups, cells(query), cells(key), cells(value), masks, strict=True
    ):
        shape = (n, heads, length, width)
        mask = real.view(n, 1, 1, length) if padded else None
        out = _attend(q.view(shape), k.view(shape), v.view(shape), mask, dropout, scaling)
        outs.append(out.reshape(-1, width))
    # transformers expects [batch, tokens, heads, width]: the row is the batch of one.
    return torch.cat(outs).index_select(0, packed_back).view(1, tokens, heads, width), None


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    scale: float | None,
) -> torch.Tensor:
    """Attention of one call, [examples, heads, length, width]. With dropout on a CPU
    it is written out here, with the cheaper draw (_keep); elsewhere it is torch's
    scaled_dot_product_attention."""
    if dropout == 0.0 or query.device.type != "cpu":
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale
        )
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    weights = scores.softmax(-1)
    keep, rescale = _keep(weights.shape, dropout)
    return torch.matmul(torch.where(keep, weights, 0.0), value) * rescale


def _keep(shape: torch.Size, dropout: float) -> tuple[torch.Tensor, float]:
    """A dropout mask of `shape` (True: kept) and the scale that keeps expectations.
    torch's CPU dropout draws each element from its own random number (7 ns each
    here); this draws 16 bits per element, four from each 64-bit random word of
    torch's generator (so a seed and a checkpoint's saved RNG state still fix it),
    and keeps the element below the threshold: probability 58982/65536 for 0.1."""
    kept = round((1.0 - dropout) * 65536)  # of the 65536 values a draw takes
    if kept <= 0 or kept >= 65536:
        return torch.full(shape, kept > 0), 1.0 if kept > 0 else 0.0
    count = math.prod(shape)
    # The full 64-bit range: each of a word's four 16-bit pieces is uniform (random_()
    # alone leaves the top bit 0). Signed, a piece is below kept - 32768 kept/65536 of the time.
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    draws = words.view(torch.int16)[:count].view(shape)
    return draws < kept - 32768, 65536 / kept


class DrawnDropout(torch.nn.Dropout):
    """torch's Dropout, but in training on a CPU its mask comes from _keep, as the
    attention's does: the model's hidden-state dropouts (embeddings, each layer's
    attention output and feed-forward output, the classifier)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or self.inplace or input.device.type != "cpu":
            return super().forward(input)
        keep, rescale = _keep(input.shape, self.p)
        return input * (keep * rescale).to(input.dtype)


def _reads_first_tokens(model: Any) -> bool:
    """Whether only each example's first token of the last layer reaches the loss:
    transformers' BERT sequence classifier, whose pooler reads [CLS]."""
    from transformers import BertForSequenceClassification

    return type(model) is BertForSequenceClassification and model.bert.pooler is not None


def _first_tokens_layer(
    layer: Any,
    hidden_states: torch.Tensor,
    *args: Any,
    packed_first: torch.Tensor | None = None,
    packed_first_keys: torch.Tensor | None = None,
    packed_first_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The last BertLayer for a packed batch, computed for each example's first token
    only; the other tokens pass through unchanged, as nothing reads them. Padded
    batches (evaluation) take the layer's own forward."""
    if packed_first is None or packed_first_keys is None or packed_first_mask is None:
        full: torch.Tensor = type(layer).forward(layer, hidden_states, *args, **kwargs)
        return full
    attention = layer.attention.self
    tokens = hidden_states[0]  # [tokens, hidden]
    first = tokens.index_select(0, packed_first)  # [examples, hidden]
    count, longest = packed_first_mask.shape
    heads, width = attention.num_attention_heads, attention.attention_head_size

    def grid(projection: torch.nn.Module) -> torch.Tensor:
        rows: torch.Tensor = projection(tokens).index_select(0, packed_first_keys)
        return rows.view(count, longest, heads, width).transpose(1, 2)

    query = attention.query(first).view(count, 1, heads, width).transpose(1, 2)
    dropout = attention.dropout.p if attention.training else 0.0
    mask = packed_first_mask.view(count, 1, 1, longest)
    context = _attend(query, grid(attention.key), grid(attention.value), mask, dropout,
                      attention.scaling)  # fmt: skip
    attended = layer.attention.output(context.reshape(count, heads * width), first)
    out = layer.output(layer.intermediate(attended), attended)
    return hidden_states.index_copy(1, packed_first, out.unsqueeze(0))


def _repad(module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """The encoder's packed output back in the padded [batch, length, hidden] shape."""
    index, mask = kwargs.get("packed_index"), kwargs.get("packed_mask")
    if index is None or mask is None:
        return None
    output.last_hidden_state = _scatter(output.last_hidden_state[0], index, mask)
    return output
