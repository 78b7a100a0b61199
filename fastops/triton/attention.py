"""Scaled dot-product attention forward and backward as Triton kernels (flash-attention).

Layout as fastops/ops/attention.py: q [N, H, L, E], k [N, Hkv, S, E], v [N, Hkv, S, Ev],
out [N, H, L, Ev] (storage float32/float16/bfloat16, last dim contiguous, other dims strided),
lse [N, H, L] float32, mask none / bool / additive viewed as [N, H, L, S] through strides.
Query head h reads kv head h // G, G = H // Hkv (GQA).

    forward : per query block, walk key blocks: s = scale q k^T + mask, online softmax (m, l),
              acc = acc * exp(m - m') + dropout(p) v; out = acc / l, lse = m + log l (+inf, out = 0 when
              every key of the row is masked)
    backward: delta = rowsum(dO * O) (preprocessing kernel); dK, dV per key block looping over
              the G query heads and the query blocks; dQ per query block looping over key blocks.
              No atomics: every output element is written by one program (deterministic).

Dropout is counter-based (csrc/include/fastops/math/dropout.h, bit-identical to the CPU kernel and
the torch reference): the backward regenerates the forward's mask from (seed, element index).
Numerics mirror csrc/include/fastops/math/softmax.h (rescale(-inf, -inf) = 0). Causal masks keep
j <= i (top-left, as torch) and skip key blocks past the diagonal. Dots accumulate in float32;
on a GPU fp16/bf16 operands go to tl.dot as they are (tensor cores), under the interpreter every
operand is upcast to float32 first (its bf16 dot multiplies raw bits, DESIGN.md). Offsets are
64-bit (program ids cast to int64 before any multiply).

Reads top to bottom: configs, kernels, launchers, report_specs() for python -m fastops.report.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from fastops.triton.matmul import _round_to_bf16  # noqa: F401  (used inside the jit functions)

# --------------------------------------------------------------------------------------------
# Configs (data only)
# --------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried on a GPU; 64/128-row tiles with 4 or 8 warps map
# to wgmma on sm_90a for fp16/bf16 (checked by the kernel report).
_FWD_TILES = ((128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2))
_BWD_TILES = ((64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2))
_INTERPRET_TILE = (16, 16, 4, 1)  # the interpreter runs one program at a time: one small config

_MASK_NONE, _MASK_BOOL, _MASK_ADD = 0, 1, 2
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _configs(tiles, names=("BLOCK_M", "BLOCK_N")) -> list[triton.Config]:
    tiles = (_INTERPRET_TILE,) if _interpreting() else tiles
    return [triton.Config(dict(zip(names, t[:2])), num_warps=t[2], num_stages=t[3]) for t in tiles]


def _keep(configs, named_args, **kwargs):
    """Drops tiles larger than the problem (as the Triton tutorial's keep())."""
    L, S = named_args.get("L", 1 << 30), named_args.get("S", 1 << 30)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(L))
            and c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(S))]
    return kept or configs[-1:]


# --------------------------------------------------------------------------------------------
# Shared pieces of the kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _operand(x, like, UPCAST: tl.constexpr):
    """x as a tl.dot operand: the storage dtype on a GPU, float32 under the interpreter."""
    if UPCAST:
        return x.to(tl.float32)
    return x.to(like.dtype)


@triton.jit
def _stored(x, ptr, UPCAST: tl.constexpr):
    """float32 x in the dtype ptr points to, for tl.store. Under the interpreter (UPCAST) a
    bfloat16 destination gets x rounded to nearest even first, as matmul's stores do: the
    interpreter's float32 -> bfloat16 cast truncates, a GPU's rounds."""
    if UPCAST and ptr.dtype.element_ty == tl.bfloat16:
        x = _round_to_bf16(x)
    return x.to(ptr.dtype.element_ty)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b accumulated in float32; PREC is the float32 input precision ("ieee" unless torch allows tf32)."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _scores(q, kt, n, h, offs_m, offs_n, L, S, scale, mask_ptr, smn, smh, sml, sms,
            MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    """[BLOCK_M, BLOCK_N] float32 scores scale * q k^T + mask, -inf where excluded."""
    s = _dot(q, kt, PREC) * scale
    valid = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if MASK_KIND != 0:
        mptr = mask_ptr + n * smn + h * smh + offs_m[:, None] * sml + offs_n[None, :] * sms
        mval = tl.load(mptr, mask=valid, other=0)
        if MASK_KIND == 1:
            valid = valid & (mval != 0)
        else:
            s = s + mval.to(tl.float32)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _fmix32(h):
    """MurmurHash3's finaliser on values < 2^32 held in int64 (math/dropout.h)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


@triton.jit
def _dropout(x, nh, offs_m, offs_n, L, S, seed_lo, seed_hi, threshold, keep_scale):
    """x * (0 where dropped, keep_scale where kept) for element ((n * H + h) * L + i) * S + j."""
    idx = (nh * L + offs_m[:, None]) * S + offs_n[None, :]
    k = _fmix32(seed_lo.to(tl.int64) ^ _fmix32((idx >> 32) ^ seed_hi.to(tl.int64)))
    bits = _fmix32((idx & 0xFFFFFFFF) ^ k)
    return tl.where(bits >= threshold, x * keep_scale, 0.0)


@triton.jit
def _query_block(q_ptr, sqn, sqh, sql, H, G, L, E, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr):
    """The program's (batch n, head h, kv head hk, n * H + h), its query rows and feature offsets,
    and its Q block [BLOCK_M, BLOCK_E] as the dot operand (0 outside L x E)."""
    pid_m = tl.program_id(0).to(tl.int64)
    nh = tl.program_id(1).to(tl.int64)
    n = nh // H
    h = nh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    q = tl.load(q_ptr + n * sqn + h * sqh + offs_m[:, None] * sql + offs_e[None, :],
                mask=(offs_m[:, None] < L) & (offs_e[None, :] < E), other=0.0)
    return n, h, h // G, nh, pid_m, offs_m, offs_e, tl.arange(0, BLOCK_EV), _operand(q, q, UPCAST)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@triton.autotune(configs=_configs(_FWD_TILES), key=["L", "S", "E", "Ev", "MASK_KIND", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr,
                     sqn, sqh, sql, skn, skh, skl, svn, svh, svl, son, soh, sol, smn, smh, sml, sms,
                     H, G, L, S, E, Ev, scale, seed_lo, seed_hi, threshold, keep_scale,
                     BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, MASK_KIND: tl.constexpr,
                     CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n, h, hk, nh, pid_m, offs_m, offs_e, offs_ev, q = _query_block(q_ptr, sqn, sqh, sql, H, G, L, E, UPCAST,
                                                                    BLOCK_M, BLOCK_E, BLOCK_EV)
    k_base = k_ptr + n * skn + hk * skh
    v_base = v_ptr + n * svn + hk * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_EV], tl.float32)
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)  # causal block skipping
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt = tl.load(k_base + offs_n[None, :] * skl + offs_e[:, None],
                     mask=(offs_n[None, :] < S) & (offs_e[:, None] < E), other=0.0)
        s = _scores(q, _operand(kt, q, UPCAST), n, h, offs_m, offs_n, L, S, scale,
                    mask_ptr, smn, smh, sml, sms, MASK_KIND, CAUSAL, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.where(m_new == float("-inf"), 0.0, tl.exp(m_i - m_new))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:  # after l: lse is that of the undropped scores
            p = _dropout(p, nh, offs_m, offs_n, L, S, seed_lo, seed_hi, threshold, keep_scale)
        v = tl.load(v_base + offs_n[:, None] * svl + offs_ev[None, :],
                    mask=(offs_n[:, None] < S) & (offs_ev[None, :] < Ev), other=0.0)
        v = _operand(v, q, UPCAST)
        acc = acc * alpha[:, None] + _dot(_operand(p, v, UPCAST), v, PREC)
        m_i = m_new
    out = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
    lse = tl.where(l_i > 0, m_i + tl.log(l_i), float("inf"))
    tl.store(out_ptr + n * son + h * soh + offs_m[:, None] * sol + offs_ev[None, :],
             _stored(out, out_ptr, UPCAST), mask=(offs_m[:, None] < L) & (offs_ev[None, :] < Ev))
    tl.store(lse_ptr + nh * L + offs_m, lse, mask=offs_m < L)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_delta_kernel(out_ptr, do_ptr, delta_ptr, son, soh, sol, sdn, sdh, sdl, H, L, Ev,
                           BLOCK_M: tl.constexpr, BLOCK_EV: tl.constexpr):
    """delta[n, h, i] = sum_d dO[n, h, i, d] * O[n, h, i, d] in float32."""
    pid_m = tl.program_id(0).to(tl.int64)
    nh = tl.program_id(1).to(tl.int64)
    n = nh // H
    h = nh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_ev = tl.arange(0, BLOCK_EV)
    msk = (offs_m[:, None] < L) & (offs_ev[None, :] < Ev)
    o = tl.load(out_ptr + n * son + h * soh + offs_m[:, None] * sol + offs_ev[None, :], mask=msk, other=0.0)
    do = tl.load(do_ptr + n * sdn + h * sdh + offs_m[:, None] * sdl + offs_ev[None, :], mask=msk, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + nh * L + offs_m, delta, mask=offs_m < L)


@triton.autotune(configs=_configs(_BWD_TILES), key=["L", "S", "E", "Ev", "MASK_KIND", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dmask_ptr,
                          sqn, sqh, sql, skn, skh, skl, svn, svh, svl, sdn, sdh, sdl, smn, smh, sml, sms,
                          H, G, L, S, E, Ev, scale, seed_lo, seed_hi, threshold, keep_scale,
                          BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, MASK_KIND: tl.constexpr,
                          CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
                          MASK_GRAD: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one key block of one kv head; dk, dv [N, Hkv, S, *] contiguous."""
    pid_n = tl.program_id(0).to(tl.int64)
    nk = tl.program_id(1).to(tl.int64)
    Hkv = H // G
    n = nk // Hkv
    hk = nk % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_e = tl.arange(0, BLOCK_E)
    offs_ev = tl.arange(0, BLOCK_EV)
    kt = tl.load(k_ptr + n * skn + hk * skh + offs_n[None, :] * skl + offs_e[:, None],
                 mask=(offs_n[None, :] < S) & (offs_e[:, None] < E), other=0.0)
    vt = tl.load(v_ptr + n * svn + hk * svh + offs_n[None, :] * svl + offs_ev[:, None],
                 mask=(offs_n[None, :] < S) & (offs_ev[:, None] < Ev), other=0.0)
    kt = _operand(kt, kt, UPCAST)
    vt = _operand(vt, vt, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_E], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_EV], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M  # queries before the block see none of its keys
    for h in range(hk * G, hk * G + G):
        for start_m in range(lo, L, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            rows = offs_m < L
            q = tl.load(q_ptr + n * sqn + h * sqh + offs_m[:, None] * sql + offs_e[None, :],
                        mask=rows[:, None] & (offs_e[None, :] < E), other=0.0)
            do = tl.load(do_ptr + n * sdn + h * sdh + offs_m[:, None] * sdl + offs_ev[None, :],
                         mask=rows[:, None] & (offs_ev[None, :] < Ev), other=0.0)
            q = _operand(q, kt, UPCAST)
            do = _operand(do, vt, UPCAST)
            lse = tl.load(lse_ptr + (n * H + h) * L + offs_m, mask=rows, other=float("inf"))
            delta = tl.load(delta_ptr + (n * H + h) * L + offs_m, mask=rows, other=0.0)
            s = _scores(q, kt, n, h, offs_m, offs_n, L, S, scale, mask_ptr, smn, smh, sml, sms,
                        MASK_KIND, CAUSAL, PREC)
            p = tl.exp(s - lse[:, None])
            dp = _dot(do, vt, PREC)
            if DROPOUT:
                nh = n * H + h
                p_dropped = _dropout(p, nh, offs_m, offs_n, L, S, seed_lo, seed_hi, threshold, keep_scale)
                dv += _dot(tl.trans(_operand(p_dropped, do, UPCAST)), do, PREC)
                dp = _dropout(dp, nh, offs_m, offs_n, L, S, seed_lo, seed_hi, threshold, keep_scale)
            else:
                dv += _dot(tl.trans(_operand(p, do, UPCAST)), do, PREC)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(_operand(ds, q, UPCAST)), q, PREC)
            if MASK_GRAD:
                tl.store(dmask_ptr + ((n * H + h) * L + offs_m[:, None]) * S + offs_n[None, :], ds,
                         mask=rows[:, None] & (offs_n[None, :] < S))
    dk = dk * scale
    base = (nk * S + offs_n[:, None])
    tl.store(dk_ptr + base * E + offs_e[None, :], _stored(dk, dk_ptr, UPCAST),
             mask=(offs_n[:, None] < S) & (offs_e[None, :] < E))
    tl.store(dv_ptr + base * Ev + offs_ev[None, :], _stored(dv, dv_ptr, UPCAST),
             mask=(offs_n[:, None] < S) & (offs_ev[None, :] < Ev))


@triton.autotune(configs=_configs(_BWD_TILES), key=["L", "S", "E", "Ev", "MASK_KIND", "CAUSAL"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                        sqn, sqh, sql, skn, skh, skl, svn, svh, svl, sdn, sdh, sdl, smn, smh, sml, sms,
                        H, G, L, S, E, Ev, scale, seed_lo, seed_hi, threshold, keep_scale,
                        BLOCK_E: tl.constexpr, BLOCK_EV: tl.constexpr, MASK_KIND: tl.constexpr,
                        CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query block; dq [N, H, L, E] contiguous."""
    n, h, hk, nh, pid_m, offs_m, offs_e, offs_ev, q = _query_block(q_ptr, sqn, sqh, sql, H, G, L, E, UPCAST,
                                                                    BLOCK_M, BLOCK_E, BLOCK_EV)
    rows = offs_m < L
    do = tl.load(do_ptr + n * sdn + h * sdh + offs_m[:, None] * sdl + offs_ev[None, :],
                 mask=rows[:, None] & (offs_ev[None, :] < Ev), other=0.0)
    do = _operand(do, do, UPCAST)
    lse = tl.load(lse_ptr + nh * L + offs_m, mask=rows, other=float("inf"))
    delta = tl.load(delta_ptr + nh * L + offs_m, mask=rows, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_E], tl.float32)
    k_base = k_ptr + n * skn + hk * skh
    v_base = v_ptr + n * svn + hk * svh
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        cols = offs_n < S
        kt = tl.load(k_base + offs_n[None, :] * skl + offs_e[:, None],
                     mask=cols[None, :] & (offs_e[:, None] < E), other=0.0)
        vt = tl.load(v_base + offs_n[None, :] * svl + offs_ev[:, None],
                     mask=cols[None, :] & (offs_ev[:, None] < Ev), other=0.0)
        kt = _operand(kt, q, UPCAST)
        s = _scores(q, kt, n, h, offs_m, offs_n, L, S, scale, mask_ptr, smn, smh, sml, sms,
                    MASK_KIND, CAUSAL, PREC)
        p = tl.exp(s - lse[:, None])
        dp = _dot(do, _operand(vt, do, UPCAST), PREC)
        if DROPOUT:
            dp = _dropout(dp, nh, offs_m, offs_n, L, S, seed_lo, seed_hi, threshold, keep_scale)
        ds = p * (dp - delta[:, None])
        dq += _dot(_operand(ds, q, UPCAST), tl.trans(kt), PREC)
    dq = dq * scale
    tl.store(dq_ptr + (nh * L + offs_m[:, None]) * E + offs_e[None, :], _stored(dq, dq_ptr, UPCAST),
             mask=rows[:, None] & (offs_e[None, :] < E))


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

def _block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _mask_args(mask, q):
    """(pointer tensor, kind, strides [N, H, L, S]) of an expanded mask, bool read as uint8."""
    if mask is None:
        return q, _MASK_NONE, (0, 0, 0, 0)
    kind = _MASK_BOOL if mask.dtype == torch.bool else _MASK_ADD
    ptr = mask.view(torch.uint8) if kind == _MASK_BOOL else mask
    return ptr, kind, tuple(mask.stride())


def _check(q, k, v):
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"attention: {name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4 or (t.shape[-1] > 1 and t.stride(-1) != 1):
            raise ValueError(f"attention: {name} must be 4-D with a contiguous last dim, got "
                             f"shape {tuple(t.shape)} strides {tuple(t.stride())}")


def _strides3(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _f32_precision() -> str:
    """float32 dots follow torch's setting: tf32 tensor cores only where torch allows them."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and not _interpreting() else "ieee"


def _dropout_args(dropout_p: float, seed: int):
    """(seed_lo, seed_hi, threshold, keep_scale) as the CPU kernel derives them (math/dropout.h)."""
    from fastops.ops.attention import dropout_threshold
    keep = float(torch.tensor(1.0, dtype=torch.float32) / (1.0 - torch.tensor(dropout_p, dtype=torch.float32)))
    return seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, dropout_threshold(dropout_p), keep


def attention_forward(q, k, v, mask, is_causal: bool, scale: float, dropout_p: float = 0.0, seed: int = 0):
    """(out [N, H, L, Ev] q.dtype, lse [N, H, L] float32) of q [N, H, L, E], k/v [N, Hkv, S, *]."""
    _check(q, k, v)
    N, H, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    out = q.new_empty((N, H, L, Ev))
    lse = q.new_empty((N, H, L), dtype=torch.float32)
    if out.numel() == 0:
        lse.fill_(float("inf"))
        return out, lse
    mptr, kind, ms = _mask_args(mask, q)
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), N * H)  # noqa: E731
    _attn_fwd_kernel[grid](q, k, v, mptr, out, lse, *_strides3(q), *_strides3(k), *_strides3(v),
                           *_strides3(out), *ms, H, H // Hkv, L, S, E, Ev, scale, *_dropout_args(dropout_p, seed),
                           BLOCK_E=_block(E), BLOCK_EV=_block(Ev), MASK_KIND=kind, CAUSAL=bool(is_causal),
                           UPCAST=_interpreting(), DROPOUT=dropout_p > 0.0, PREC=_f32_precision())
    return out, lse


def attention_backward(grad, q, k, v, out, lse, mask, is_causal: bool, scale: float, dropout_p: float, seed: int,
                       need_mask_grad: bool):
    """(dq, dk, dv, dmask [N, H, L, S] float32 or empty) for attention_forward's (out, lse)."""
    _check(q, k, v)
    if grad.shape[-1] > 1 and grad.stride(-1) != 1:
        grad = grad.contiguous()
    N, H, L, E = q.shape
    Hkv, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    dq = torch.empty((N, H, L, E), dtype=q.dtype, device=q.device)
    dk = torch.empty((N, Hkv, S, E), dtype=q.dtype, device=q.device)
    dv = torch.empty((N, Hkv, S, Ev), dtype=q.dtype, device=q.device)
    dmask = (torch.zeros((N, H, L, S), dtype=torch.float32, device=q.device) if need_mask_grad
             else q.new_empty(0, dtype=torch.float32))
    if N * H * L == 0 or S == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dmask
    lse = lse.contiguous()
    delta = torch.empty((N, H, L), dtype=torch.float32, device=q.device)
    _attn_bwd_delta_kernel[(triton.cdiv(L, 16), N * H)](out, grad, delta, *_strides3(out), *_strides3(grad),
                                                        H, L, Ev, BLOCK_M=16, BLOCK_EV=_block(Ev))
    mptr, kind, ms = _mask_args(mask, q)
    common = dict(BLOCK_E=_block(E), BLOCK_EV=_block(Ev), MASK_KIND=kind, CAUSAL=bool(is_causal),
                  UPCAST=_interpreting(), DROPOUT=dropout_p > 0.0, PREC=_f32_precision())
    strides = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(grad), *ms)
    shape = (H, H // Hkv, L, S, E, Ev, scale, *_dropout_args(dropout_p, seed))
    grid_kv = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), N * Hkv)  # noqa: E731
    _attn_bwd_dkdv_kernel[grid_kv](q, k, v, mptr, grad, lse, delta, dk, dv, dmask, *strides, *shape,
                                   MASK_GRAD=bool(need_mask_grad), **common)
    grid_q = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), N * H)  # noqa: E731
    _attn_bwd_dq_kernel[grid_q](q, k, v, mptr, grad, lse, delta, dq, *strides, *shape, **common)
    return dq, dk, dv, dmask


# --------------------------------------------------------------------------------------------
# Kernel report (python -m fastops.report)
# --------------------------------------------------------------------------------------------

_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_STRIDE_NAMES = ("sqn", "sqh", "sql", "skn", "skh", "skl", "svn", "svh", "svl")


@functools.lru_cache(maxsize=None)
def _report_kernels():
    """(name, autotuner, pointer args, int args, GPU tiles, extra constexprs)."""
    shape_ints = ("H", "G", "L", "S", "E", "Ev")
    mask_strides = ("smn", "smh", "sml", "sms")
    return (
        ("attn_fwd", _attn_fwd_kernel, ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "out_ptr"),
         (*_STRIDE_NAMES, "son", "soh", "sol", *mask_strides, *shape_ints), _FWD_TILES, {}),
        ("attn_bwd_dkdv", _attn_bwd_dkdv_kernel, ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "do_ptr", "dk_ptr",
                                                  "dv_ptr"),
         (*_STRIDE_NAMES, "sdn", "sdh", "sdl", *mask_strides, *shape_ints), _BWD_TILES, {"MASK_GRAD": False}),
        ("attn_bwd_dq", _attn_bwd_dq_kernel, ("q_ptr", "k_ptr", "v_ptr", "mask_ptr", "do_ptr", "dq_ptr"),
         (*_STRIDE_NAMES, "sdn", "sdh", "sdl", *mask_strides, *shape_ints), _BWD_TILES, {}),
    )


def report_specs() -> list[dict]:
    """Every kernel x GPU tile x dtype to compile for the report: head dim 64, no mask, not causal."""
    specs = []
    for torch_dtype, ty in _REPORT_DTYPES.items():
        for name, autotuner, ptrs, ints, tiles, extra in _report_kernels():
            fn = autotuner.fn
            signature = {}
            for arg in fn.arg_names:
                if arg in ptrs:
                    signature[arg] = f"*{ty}"
                elif arg in ("lse_ptr", "delta_ptr", "dmask_ptr"):
                    signature[arg] = "*fp32"
                elif arg in ints:
                    signature[arg] = "i64" if arg.startswith("s") else "i32"
                elif arg in ("scale", "keep_scale"):
                    signature[arg] = "fp32"
                elif arg in ("seed_lo", "seed_hi", "threshold"):
                    signature[arg] = "i64"
            for bm, bn, warps, stages in tiles:
                constexprs = {"BLOCK_E": 64, "BLOCK_EV": 64, "MASK_KIND": _MASK_NONE, "CAUSAL": False,
                              "UPCAST": False, "DROPOUT": False,
                              "PREC": "ieee" if ty == "fp32" else "tf32", **extra, "BLOCK_M": bm, "BLOCK_N": bn}
                specs.append({
                    "kernel": f"{name}[{ty}]",
                    "fn": fn,
                    "signature": signature,
                    "constexprs": constexprs,
                    "config": f"BLOCK_M={bm},BLOCK_N={bn},E=64,warps={warps},stages={stages}",
                    "num_warps": warps,
                    "num_stages": stages,
                    "divisible_by_16": tuple(p for p in ptrs),
                })
    return specs
