"""Scoring: the language model's last decoder layer at the answer position only.

Why: scoring reads the logits of one position, the last (left padding puts every row's answer position
there; `logits_to_keep=1`). Every earlier layer must run at every position, since the last layer's keys
and values come from all of them; but in the last layer nothing but that position's output is read. So
its keys and values are made for every position as before, and its queries, attention output,
o_proj, MLP and norms only for the last one: about 1/36 of Qwen3-VL-8B's decoder work per example
(docs/benchmarks.md). The same operations on a subset of the rows, so the same function; the matrix
products run over fewer rows, so the additions may go in another order: equal within rounding.

Only for a forward with no cache and not in training (scoring's); anything else runs the library's
layer. Not where the last layer is one that receives the vision tower's deepstack features, which the
model adds to every image position after that layer.
"""
from __future__ import annotations

import types

from maskgate.model.speedups import decoder_layers


def _last_position_forward(self, hidden_states, position_embeddings, attention_mask=None, position_ids=None,
                           past_key_values=None, use_cache=False, **kwargs):
    """Qwen3VLTextDecoderLayer.forward that returns the last position only: (batch, 1, hidden)."""
    if past_key_values is not None or self.training or hidden_states.shape[1] == 1:
        return self._maskgate_all_positions(hidden_states, position_embeddings, attention_mask=attention_mask,
                                            position_ids=position_ids, past_key_values=past_key_values,
                                            use_cache=use_cache, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward, rotate_half

    attn = self.self_attn
    batch, length = hidden_states.shape[:2]
    normed = self.input_layernorm(hidden_states)
    heads = (batch, length, -1, attn.head_dim)
    query = attn.q_norm(attn.q_proj(normed[:, -1:]).view(batch, 1, -1, attn.head_dim)).transpose(1, 2)
    key = attn.k_norm(attn.k_proj(normed).view(heads)).transpose(1, 2)
    value = attn.v_proj(normed).view(heads).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # the library's apply_rotary_pos_emb, split in two
    key = key * cos + rotate_half(key) * sin
    query = query * cos[:, :, -1:] + rotate_half(query) * sin[:, :, -1:]
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, -1:, :]  # the last query's row: which keys it may see
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = interface(attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling,
                       position_ids=position_ids, **kwargs)
    hidden = hidden_states[:, -1:] + attn.o_proj(out.reshape(batch, 1, -1).contiguous())
    return hidden + self.mlp(self.post_attention_layernorm(hidden))


def last_layer_at_answer(model, where: str = "scoring", print_fn=print) -> bool:
    """Make the last decoder layer compute the last position only (in place); True if it was changed."""
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
        last._maskgate_all_positions = last.forward
        last.forward = types.MethodType(_last_position_forward, last)
    print_fn(f"{where}: the last decoder layer runs at the answer position only")
    return True
