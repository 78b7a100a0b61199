"""Fused Adam/AdamW step as one multi-tensor Triton kernel.

The tensors of one (device, dtype) bucket are described by tables held in int64/float32 tensors:
``ptrs[n, 6]`` (addresses of param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master param; 0
where absent), ``numel[n]`` and ``scalars[n, 2]`` (-lr / (1 - beta1^step) and
sqrt(1 - beta2^step), computed on the device in float64 from the step tensors, as
``adam_scalars`` in ``csrc/include/fastops/math/adam.h``). Each tensor is cut into chunks of
``CHUNK`` elements; program ``b`` updates chunk ``block_chunk[b]`` of tensor ``block_tensor[b]``,
``BLOCK`` elements at a time, so one launch covers the whole bucket. Offsets are int64.

Numerics mirror ``adam_update`` in ``csrc/include/fastops/math/adam.h`` operation for operation:
float32 math whatever the storage dtype, params/grads float32, float16 or bfloat16, states
float32. Under ``TRITON_INTERPRET=1`` (tests on CPU tensors) the same kernel and tables run:
the pointer tables hold real host addresses and the loaded addresses are cast to pointers.

The file reads top to bottom: configs, the jit kernel, the launcher, report_specs().
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Elements per program (a chunk) and per inner iteration.
CHUNK = 16384
BLOCK = 1024
NUM_WARPS = 4
_INTERPRET_CHUNK, _INTERPRET_BLOCK = 1024, 1024  # fewer, larger numpy steps under the interpreter

_SUPPORTED_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_SLOTS = 6  # param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _to_storage(x, P_DTYPE: tl.constexpr):
    """float32 -> P_DTYPE, rounding to nearest even. bfloat16 is rounded by hand (storage.h's
    from_float<BFloat16>): the interpreter's cast truncates, which biases a trajectory."""
    if P_DTYPE == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(x != x, (u >> 16) | 0x40, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(P_DTYPE)


@triton.jit
def _adam_kernel(ptrs_ptr, numel_ptr, scalars_ptr, block_tensor_ptr, block_chunk_ptr,
                 grad_scale_ptr, found_inf_ptr,
                 eps, beta2, one_minus_beta1, one_minus_beta2, l2, decay,
                 P_DTYPE: tl.constexpr, L2_ON: tl.constexpr, DECAY_ON: tl.constexpr,
                 AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, MASTER: tl.constexpr,
                 HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr,
                 CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    t = tl.load(block_tensor_ptr + b).to(tl.int64)
    begin = tl.load(block_chunk_ptr + b).to(tl.int64) * CHUNK
    n = tl.load(numel_ptr + t)
    row = ptrs_ptr + t * 6
    p_ptr = tl.load(row + 0).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(P_DTYPE))
    m_ptr = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    neg_step_size = tl.load(scalars_ptr + t * 2)
    bc2_sqrt = tl.load(scalars_ptr + t * 2 + 1)
    # found_inf != 0: every access masked off, nothing is read or written
    n = tl.where(tl.load(found_inf_ptr) == 0.0, n, 0) if HAS_INF else n
    for start in range(0, CHUNK, BLOCK):
        offs = begin + start + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            g = g / tl.load(grad_scale_ptr)
            tl.store(g_ptr + offs, _to_storage(g, P_DTYPE), mask=mask)
        if MASTER:
            x_ptr = tl.load(row + 5).to(tl.pointer_type(tl.float32))
            p = tl.load(x_ptr + offs, mask=mask, other=0.0)
        else:
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0)
        # adam_update (math/adam.h)
        if MAXIMIZE:
            g = -g
        if DECAY_ON:
            p = p * decay
        if L2_ON:
            g = g + l2 * p
        m = m + one_minus_beta1 * (g - m)
        v = v * beta2 + one_minus_beta2 * g * g
        vv = v
        if AMSGRAD:
            vmax_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
            vmax = tl.load(vmax_ptr + offs, mask=mask, other=0.0)
            vmax = tl.where(vmax > v, vmax, v)
            vmax = tl.where(v != v, v, vmax)
            tl.store(vmax_ptr + offs, vmax, mask=mask)
            vv = vmax
        denom = tl.sqrt_rn(vv) / bc2_sqrt + eps
        p = p + neg_step_size * m / denom
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        if MASTER:
            tl.store(x_ptr + offs, p, mask=mask)
        tl.store(p_ptr + offs, _to_storage(p, P_DTYPE), mask=mask)


def _step_scalars(steps: list, lr: float, beta1: float, beta2: float) -> torch.Tensor:
    """[n, 2] float32: -lr / (1 - beta1^step), sqrt(1 - beta2^step), in float64 on the device."""
    s = torch.stack([x.reshape(()) for x in steps]).double()
    bc1 = 1 - torch.pow(torch.tensor(beta1, dtype=torch.float64, device=s.device), s)
    bc2 = 1 - torch.pow(torch.tensor(beta2, dtype=torch.float64, device=s.device), s)
    return torch.stack([-(lr / bc1), bc2.sqrt()], 1).float()


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr, beta1,
              beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale=None, found_inf=None):
    """One Adam/AdamW step over contiguous tensors of one device and dtype (see fastops/ops/adam.py
    for the arguments); one launch for the whole list."""
    if not params:
        return
    dtype = params[0].dtype
    if dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"adam_step: params must be float32, float16 or bfloat16, got {dtype}")
    device = params[0].device
    chunk, block = (_INTERPRET_CHUNK, _INTERPRET_BLOCK) if _interpreting() else (CHUNK, BLOCK)
    rows, numel, block_tensor, block_chunk = [], [], [], []
    for i, p in enumerate(params):
        slots = [p, grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None,
                 master_params[i] if master_params else None]
        rows.append([0 if t is None else t.data_ptr() for t in slots])
        numel.append(p.numel())
        chunks = triton.cdiv(p.numel(), chunk)
        block_tensor += [i] * chunks
        block_chunk += range(chunks)
    if not block_tensor:
        return
    ptrs = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
    numel_t = torch.tensor(numel, dtype=torch.int64).to(device, non_blocking=True)
    blocks = torch.tensor([block_tensor, block_chunk], dtype=torch.int32).to(device, non_blocking=True)
    scalars = _step_scalars(state_steps, lr, beta1, beta2)
    dummy = scalars  # any float32 pointer for absent grad_scale / found_inf
    wd = weight_decay != 0
    _adam_kernel[(len(block_tensor),)](
        ptrs, numel_t, scalars, blocks[0], blocks[1],
        grad_scale if grad_scale is not None else dummy, found_inf if found_inf is not None else dummy,
        eps, beta2, 1 - beta1, 1 - beta2, weight_decay, 1 - lr * weight_decay,
        P_DTYPE=_SUPPORTED_DTYPES[dtype], L2_ON=wd and not decoupled, DECAY_ON=wd and decoupled,
        AMSGRAD=bool(amsgrad), MAXIMIZE=bool(maximize), MASTER=bool(master_params),
        HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
        CHUNK=chunk, BLOCK=block, num_warps=NUM_WARPS)


# --------------------------------------------------------------------------------------------
# Kernel report (python -m fastops.report): what to compile, without a GPU
# --------------------------------------------------------------------------------------------

_REPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def report_specs() -> list[dict]:
    """The kernel per param dtype, plain and with amsgrad + master weights + grad scaling."""
    signature = {"ptrs_ptr": "*i64", "numel_ptr": "*i64", "scalars_ptr": "*fp32", "block_tensor_ptr": "*i32",
                 "block_chunk_ptr": "*i32", "grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32",
                 "eps": "fp32", "beta2": "fp32", "one_minus_beta1": "fp32", "one_minus_beta2": "fp32",
                 "l2": "fp32", "decay": "fp32"}
    specs = []
    for torch_dtype, ty in _REPORT_DTYPES.items():
        for extras in (False, True):
            constexprs = {"P_DTYPE": _SUPPORTED_DTYPES[torch_dtype], "L2_ON": False, "DECAY_ON": True,
                          "AMSGRAD": extras, "MAXIMIZE": False, "MASTER": extras and ty != "fp32",
                          "HAS_SCALE": extras, "HAS_INF": extras, "CHUNK": CHUNK, "BLOCK": BLOCK}
            name = "adam_step_full" if extras else "adam_step"
            specs.append({
                "kernel": f"{name}[{ty}]", "fn": _adam_kernel, "signature": signature,
                "constexprs": constexprs,
                "config": f"CHUNK={CHUNK},BLOCK={BLOCK},warps={NUM_WARPS}",
                "num_warps": NUM_WARPS, "num_stages": 1, "divisible_by_16": (),
            })
    return specs
