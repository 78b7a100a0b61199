"""fastops.nn.MultiheadAttention: torch.nn.MultiheadAttention with its attention on fastops SDPA."""
import torch
import torch.nn.functional as TF

from fastops import _dispatch, _dropin
from fastops import functional as F
from fastops.ops.attention import FAMILY


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention whose attention runs on fastops.functional.scaled_dot_product_attention.

    Same constructor, parameters and state_dict keys as torch's. query (L, N, Eq) or (N, L, Eq) with
    batch_first, or unbatched (L, Eq); key/value (S, N, Ek/Ev) likewise. Projections and out_proj
    are torch linear layers; attn_mask (L, S) or (N * num_heads, L, S) and key_padding_mask (N, S),
    bool (True = do not attend, torch's MHA convention) or additive, are merged into one additive
    mask. Falls back to torch's own forward (reason in fastops.explain()) for need_weights=True
    (the default, as torch's fast path), add_bias_kv and add_zero_attn. Returns (output, None).
    """

    def _why_torch(self, query, need_weights) -> str | None:
        if need_weights:
            return "need_weights=True (attention weights are materialised by torch's path)"
        if self.bias_k is not None or self.add_zero_attn:
            return "add_bias_kv / add_zero_attn"
        if query.dim() not in (2, 3):
            return f"query of {query.dim()} dims"
        return None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        why = self._why_torch(query, need_weights)
        if why is not None:
            _dispatch.fallback("sdpa_forward", query, f"MultiheadAttention: {why}")
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        if is_causal and attn_mask is None:
            raise RuntimeError("fastops.nn.MultiheadAttention: is_causal=True needs attn_mask (a hint, as torch)")
        batched = query.dim() == 3
        if not batched:
            query, key, value = (x.unsqueeze(1) for x in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        L, N, E = query.shape
        S = key.shape[0]
        heads, hd = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        # (len, N, E) -> (N, heads, len, head_dim)
        q, k, v = (TF.linear(x, w, b).reshape(x.shape[0], N, heads, hd).permute(1, 2, 0, 3)
                   for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
        mask = self._merged_mask(attn_mask, key_padding_mask, q.dtype, N, L, S)
        causal = bool(is_causal) and key_padding_mask is None  # the mask is the causal one (torch's hint)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                             dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        out = out.permute(2, 0, 1, 3).reshape(L, N, E)
        out = TF.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            return out.squeeze(1), None
        return (out.transpose(0, 1) if self.batch_first else out), None

    def _merged_mask(self, attn_mask, key_padding_mask, dtype, N, L, S):
        """One additive mask broadcastable to (N, heads, L, S), or None, from torch's MHA masks."""
        key_padding_mask = TF._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                              other_type=TF._none_or_dtype(attn_mask), other_name="attn_mask",
                                              target_type=dtype)
        attn_mask = TF._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                       target_type=dtype, check_other=False)
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(N, self.num_heads, L, S)
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(N, 1, 1, S)
            mask = kpm if mask is None else mask + kpm
        return mask


_dropin.register_module(FAMILY, torch.nn.MultiheadAttention, MultiheadAttention)
