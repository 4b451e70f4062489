"""Padding-free steps: each micro-batch's real tokens in one row, no padding.

A BERT step is mostly matrix multiplies over tokens: the attention projections,
the feed-forward layers, layer norms and dropout all treat each token on its own.
With per-batch padding a quarter of MRPC's tokens are padding, and all of that
work is thrown away. Here the training batch is packed instead: the real tokens of
its examples are laid out in one row (input_ids of shape [1, tokens]), each with
its position within its own example, so the per-token layers only see real tokens.

Attention is the one place where examples must not see each other. There the row
is scattered back into the padded [batch, length] grid, attention runs masked
exactly as it does padded, and its result is gathered back into the row. The
encoder's output is padded again (zeros where padding was), so the pooler and the
classifier see the shape they always see. The arithmetic is the padded model's:
tests compare logits and trained weights with the padded model's. The order of
the data is untouched, unlike length grouping, so accuracy is that of padded
training; only the padding's wasted work goes.

It applies to models whose attention runs through transformers' AttentionInterface
and whose positions count from 0 in each example: BERT and its distillations such
as MiniLM (model_type "bert"). Other models train padded, and the start-up log says
so. Evaluation stays padded: without the packed layout the attention below is
transformers' own SDPA attention.
"""

from __future__ import annotations

from typing import Any

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


def enable(model: Any) -> bool:
    """Route `model`'s attention through the packed path; False if it cannot be."""
    if not supports(model):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # padded calls: SDPA's mask
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:  # refused (transformers logs why)
        return False
    model.base_model.encoder.register_forward_hook(_repad, with_kwargs=True)
    return True


def pack(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tokenizer's padded batch as one row of real tokens plus its layout:
    packed_index (where each real token sits in the flattened [batch, length] grid)
    and packed_mask (the attention mask). Labels are kept as they are."""
    mask = batch["attention_mask"]
    length = mask.shape[1]
    index = mask.reshape(-1).nonzero().squeeze(1)
    packed: dict[str, torch.Tensor] = {
        key: batch[key].reshape(-1).index_select(0, index).unsqueeze(0)
        for key in ("input_ids", "token_type_ids")
        if key in batch
    }
    # The position a padded forward gives each token: its column in the grid.
    packed["position_ids"] = (index % length).unsqueeze(0)
    packed["packed_index"] = index
    packed["packed_mask"] = mask.bool()
    if "labels" in batch:
        packed["labels"] = batch["labels"]
    return packed


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The number of real (not padding) tokens in a packed or a padded batch."""
    mask = batch["packed_mask"] if "packed_index" in batch else batch["attention_mask"]
    return mask.sum()


def _scatter(tokens: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[tokens, ...] -> [batch, length, ...]: each token at its place, zeros at padding."""
    batch, length = mask.shape
    grid = tokens.new_zeros(batch * length, *tokens.shape[1:]).index_copy(0, index, tokens)
    return grid.view(batch, length, *tokens.shape[1:])


def _grid(row: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[1, heads, tokens, width] -> [batch, heads, length, width], zeros at padding."""
    return _scatter(row[0].transpose(0, 1), index, mask).transpose(1, 2)


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_index: torch.Tensor | None = None,
    packed_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_index is None or packed_mask is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, length = packed_mask.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        _grid(query, packed_index, packed_mask),
        _grid(key, packed_index, packed_mask),
        _grid(value, packed_index, packed_mask),
        attn_mask=packed_mask[:, None, None, :],
        dropout_p=dropout,
        scale=scaling,
    )
    heads, width = out.shape[1], out.shape[3]
    out = out.transpose(1, 2).reshape(batch * length, heads, width)
    # transformers expects [batch, tokens, heads, width]: the row is the batch of one.
    return out.index_select(0, packed_index).unsqueeze(0), None


def _repad(module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """The encoder's packed output back in the padded [batch, length, hidden] shape."""
    index, mask = kwargs.get("packed_index"), kwargs.get("packed_mask")
    if index is None or mask is None:
        return None
    output.last_hidden_state = _scatter(output.last_hidden_state[0], index, mask)
    return output
