"""The language model's last decoder layer at the positions whose logits are read, and no others.

Why: scoring reads the logits of one position (left padding puts every row's answer position last;
`logits_to_keep=1`), training those of the answer positions (`answer_loss`: `logits_to_keep` lists them).
Every earlier layer must run at every position, since the last layer's keys and values come from all of
them; but in the last layer nothing but the kept positions' outputs is read. So its keys and values are made
for every position as before, and its queries, attention output, o_proj, MLP and norms only for the kept
ones: about 1/36 of Qwen3-VL-8B's decoder work per example, in training its backward too
(docs/benchmarks.md). The same operations on a subset of the rows, so the same function; the matrix
products run over fewer rows, so the additions may go in another order: equal within rounding
(tests/test_scoring.py, tests/test_answer_loss.py).

Which positions: a forward pre-hook on the model reads its `logits_to_keep` (an int k: the last k
positions; a list of positions; 0, the default: all). With all positions, a cache, a one-position input,
or an attention other than sdpa or eager, the library's layer runs. Not where the last layer is one that
receives the vision tower's deepstack features, which the model adds to every image position after it.
"""
from __future__ import annotations

import types

import torch

from maskgate.model.speedups import decoder_layers

IMPLEMENTATIONS = ("sdpa", "eager")  # they take the model's 4-D mask, whose rows can be picked (flash: per row)


def _kept_positions_forward(self, hidden_states, position_embeddings, attention_mask=None, position_ids=None,
                            past_key_values=None, use_cache=False, **kwargs):
    """Qwen3VLTextDecoderLayer.forward computing only the kept positions' outputs.

    The last k positions: returns (batch, k, hidden). A list of positions: returns the full length, the
    layer's input at every other position (nothing reads them)."""
    keep = self._maskgate_keep
    length = hidden_states.shape[1]
    attn = self.self_attn
    implementation = attn.config._attn_implementation
    # no mask means causal, which sdpa aligns to the first key, not to the kept rows: one is made for them (boolean,
    # sdpa's kind), unless the only row is the last, which may see every key
    make_mask = attention_mask is None and not (isinstance(keep, int) and keep == 1)
    if (past_key_values is not None or length == 1 or (isinstance(keep, int) and not 0 < keep < length)
            or implementation not in IMPLEMENTATIONS or (make_mask and implementation != "sdpa")):
        return self._maskgate_all_positions(hidden_states, position_embeddings, attention_mask=attention_mask,
                                            position_ids=position_ids, past_key_values=past_key_values,
                                            use_cache=use_cache, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward, rotate_half

    rows = slice(length - keep, None) if isinstance(keep, int) else keep
    batch = hidden_states.shape[0]
    normed = self.input_layernorm(hidden_states)
    heads = (batch, length, -1, attn.head_dim)
    kept = normed[:, rows]
    query = attn.q_norm(attn.q_proj(kept).view(batch, kept.shape[1], -1, attn.head_dim)).transpose(1, 2)
    key = attn.k_norm(attn.k_proj(normed).view(heads)).transpose(1, 2)
    value = attn.v_proj(normed).view(heads).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # the library's apply_rotary_pos_emb, split in two
    key = key * cos + rotate_half(key) * sin
    query = query * cos[:, :, rows] + rotate_half(query) * sin[:, :, rows]
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, rows, :]  # the kept queries' rows: which keys each may see
    elif make_mask:
        where = torch.arange(length, device=hidden_states.device)[rows]
        attention_mask = (torch.arange(length, device=where.device)[None, :] <= where[:, None])[None, None]
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    out, _ = interface(attn, query, key, value, attention_mask, scaling=attn.scaling, position_ids=position_ids,
                       dropout=attn.attention_dropout if self.training else 0.0, **kwargs)
    hidden = hidden_states[:, rows] + attn.o_proj(out.reshape(batch, kept.shape[1], -1).contiguous())
    hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
    return hidden if isinstance(keep, int) else hidden_states.index_copy(1, keep, hidden)


def _read_keep(layer):
    def hook(module, args, kwargs):
        keep = kwargs.get("logits_to_keep", 0)
        layer._maskgate_keep = keep if isinstance(keep, int) or keep.ndim == 1 else 0

    return hook


def last_layer_at_answer(model, where: str = "scoring", print_fn=print) -> bool:
    """Make the last decoder layer compute the kept positions only (in place); True if it was changed."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{where}: last_layer_at_answer found no decoder layers")
    config = model.config
    deepstack = len(getattr(getattr(config, "vision_config", None), "deepstack_visual_indexes", []) or [])
    if len(layers) <= deepstack:
        print_fn(f"{where}: last_layer_at_answer: the last decoder layer takes deepstack features; running all positions")
        return False
    last = layers[-1]
    if getattr(last, "_maskgate_all_positions", None) is None:
        last._maskgate_all_positions, last._maskgate_keep = last.forward, 0
        last.forward = types.MethodType(_kept_positions_forward, last)
        top = model.get_base_model() if hasattr(model, "get_base_model") else model  # the module given logits_to_keep
        top.register_forward_pre_hook(_read_keep(last), with_kwargs=True)
    print_fn(f"{where}: the last decoder layer runs at the answer positions only")
    return True
