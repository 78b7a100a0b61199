"""Fused Adam/AdamW step as a custom op: fastops::adam_step_, with its kernels.

    adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
               lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled,
               grad_scale, found_inf, backend) -> None

One call updates, in place, n parameters of one device and one dtype that share their
hyperparameters (a (device, dtype) bucket of one param group):

    params[i]           any shape, float32/float16/bfloat16 (float64 and other mixes via torch)
    grads[i]            params[i]'s shape and dtype; divided by grad_scale in place when given
    exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] (amsgrad only, else an empty list)
                        params[i]'s shape, float32 (the kernels' requirement; torch takes any)
    master_params[i]    optional float32 copies of 16-bit params (empty list: none); the update
                        runs on them and params[i] receives the rounded result
    state_steps[i]      one-element float32 tensors on the params' device, already incremented
                        for this step (torch._fused_adam_'s convention; nothing here changes them)
    grad_scale, found_inf  optional one-element float32 tensors, as torch._fused_adam_ takes them:
                        grads are unscaled by grad_scale; found_inf != 0 skips the whole update

Math in float32 (fastops/math/adam.h; the order of torch.optim.Adam's single-tensor path).
Non-contiguous tensors are updated through contiguous copies written back afterwards.
`backend` as in fastops/ops/softmax.py: a name from fastops.BACKENDS or "auto:<name>".
Under fastops.enable() (family "optim") torch's aten::_fused_adam_/_fused_adamw_ run on the same
kernels (see the end of this file).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastops import _dispatch, _dropin, _ext

FAMILY = "optim"
OP = "adam_step"


# ---- argument checks shared by the op and the fake ----------------------------------------------

def check_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
                amsgrad: bool) -> None:
    """Lengths and shapes of the lists: RuntimeError naming the list, as torch's fused Adam."""
    n = len(params)
    need = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "state_steps": state_steps}
    if amsgrad:
        need["max_exp_avg_sqs"] = max_exp_avg_sqs
    if master_params:
        need["master_params"] = master_params
    for name, lst in need.items():
        if len(lst) != n:
            raise RuntimeError(f"fastops.adam_step_: {name} must hold one tensor per param ({n}), got {len(lst)}")
    for name in ("grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "master_params"):
        lst = need.get(name, ())
        for i, (t, p) in enumerate(zip(lst, params)):
            if t.shape != p.shape:
                raise RuntimeError(f"fastops.adam_step_: {name}[{i}] must have the shape of params[{i}] "
                                   f"{list(p.shape)}, got {list(t.shape)}")
            if t.device != p.device:
                raise RuntimeError(f"fastops.adam_step_: {name}[{i}] must be on {p.device}, got {t.device}")


def kernel_unsupported(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params,
                       state_steps, *rest) -> Optional[str]:
    """None when the compiled/Triton kernels take this call, else why not (then torch runs it)."""
    p0 = params[0]
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.dtype != p0.dtype or g.dtype != p.dtype:
            return f"params and grads must share one dtype, got {p.dtype}/{g.dtype} at {i}"
        if p.device != p0.device:
            return "params are on several devices"
    for name, lst in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                      ("max_exp_avg_sqs", max_exp_avg_sqs), ("master_params", master_params)):
        if any(t.dtype != torch.float32 for t in lst):
            return f"{name} must be float32 for the fused kernels"
    if any(s.dtype != torch.float32 or s.device != p0.device or s.numel() != 1 for s in state_steps):
        return f"state_steps must be one-element float32 tensors on {p0.device}"
    return None


# ---- contiguous views for the kernels -------------------------------------------------------------

def with_contiguous(kernel):
    """Wraps kernel(lists..., *scalars) so it only sees contiguous tensors: for each param whose
    tensors are not all contiguous, contiguous copies go in and the results are copied back."""
    def run(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, *scalars):
        lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params]
        if all(t.is_contiguous() for lst in lists for t in lst):
            return kernel(*lists, state_steps, *scalars)
        copies, back = [], []
        for lst in lists:
            out = []
            for t in lst:
                c = t if t.is_contiguous() else t.contiguous()
                if c is not t:
                    back.append((t, c))
                out.append(c)
            copies.append(out)
        kernel(*copies, state_steps, *scalars)
        for t, c in back:
            t.copy_(c)
    return run


@with_contiguous
def _adam_c(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr, beta1,
            beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf):
    _ext.C.adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps,
                     lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf)


@with_contiguous
def _adam_triton(*args):
    from fastops.triton import adam as tk  # noqa: PLC0415
    tk.adam_step(*args)


def adam_ref(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr, beta1,
             beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale=None, found_inf=None):
    """The torch reference: torch.optim.Adam's single-tensor math per tensor, computed in float32
    (float64 for float64 params) whatever the storage dtypes, so it also covers fp32 states and
    master weights for 16-bit params."""
    if found_inf is not None and float(found_inf) != 0.0:
        return
    for i, p in enumerate(params):
        compute = torch.float64 if p.dtype == torch.float64 else torch.float32
        g = grads[i].to(compute)
        if grad_scale is not None:
            g = g / grad_scale.to(compute)
            grads[i].copy_(g)
        if maximize:
            g = -g
        x = master_params[i].to(compute) if master_params else p.to(compute)
        m, v = exp_avgs[i].to(compute), exp_avg_sqs[i].to(compute)
        step = float(state_steps[i])
        if weight_decay != 0:
            if decoupled:
                x = x.mul(1 - lr * weight_decay)
            else:
                g = g.add(x, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / (1 - beta1 ** step)
        if amsgrad:
            vmax = torch.maximum(max_exp_avg_sqs[i].to(compute), v)
            max_exp_avg_sqs[i].copy_(vmax)
            denom = (vmax.sqrt() / bc2_sqrt).add_(eps)
        else:
            denom = (v.sqrt() / bc2_sqrt).add_(eps)
        x.addcdiv_(m, denom, value=-step_size)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        if master_params:
            master_params[i].copy_(x)
        p.copy_(x)


def _supports(first_param, *args):
    """select() passes the first param (device and dtype) followed by the op's arguments."""
    return kernel_unsupported(*args)


_dispatch.register_op(OP, FAMILY, {"cuda": _adam_c, "triton": _adam_triton, "cpu": _adam_c, "torch": adam_ref},
                      supports={"cuda": _supports, "triton": _supports, "cpu": _supports})


# ---- the custom op ---------------------------------------------------------------------------------

@torch.library.custom_op("fastops::adam_step_",
                         mutates_args=("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs",
                                       "master_params"))
def adam_step_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
               exp_avg_sqs: list[torch.Tensor], max_exp_avg_sqs: list[torch.Tensor],
               master_params: list[torch.Tensor], state_steps: list[torch.Tensor], lr: float, beta1: float,
               beta2: float, weight_decay: float, eps: float, amsgrad: bool, maximize: bool,
               decoupled: bool, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
               backend: str) -> None:
    adam_step_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr, beta1,
                     beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf, backend)


def adam_step_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
                     beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf,
                     backend) -> None:
    """The op's body: checks, backend choice, kernel. Eager callers with no graph to record (an
    optimizer step) call it directly and skip the custom op's per-call cost, which dominates a
    step over a few small tensors; they then bump the version counters themselves."""
    check_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, amsgrad)
    if not params:
        return
    args = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [], master_params,
            state_steps, float(lr), float(beta1), float(beta2), float(weight_decay), float(eps), bool(amsgrad),
            bool(maximize), bool(decoupled), grad_scale, found_inf)
    choice = _dispatch.select_for_op(OP, backend, params[0], *args)
    choice.kernel.fn(*args)


def adam_step_eager(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, *rest) -> None:
    """fastops::adam_step_ without the custom-op wrapper, for eager code outside torch.compile: the
    same kernel, and the version counters of every mutated tensor bumped as the op would."""
    adam_step_kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, *rest)
    torch._C._increment_version([*params, *grads, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs, *master_params])


@adam_step_.register_fake
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, lr,
                    beta1, beta2, weight_decay, eps, amsgrad, maximize, decoupled, grad_scale, found_inf,
                    backend):
    check_lists(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, state_steps, amsgrad)


# ---- aten overrides for fastops.enable(): torch.optim.Adam/AdamW(fused=True) run on fastops -------

def _aten_fused(decoupled: bool):
    """Handler of aten::_fused_adam(w)_ (both overloads: lr float or tensor). Same convention as
    the op: steps already incremented, grads unscaled in place, found_inf skips. Cases the kernels
    do not take (torch keeps 16-bit moments for 16-bit params) run torch's own kernel."""
    def handler(original, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1,
                beta2, weight_decay, eps, amsgrad, maximize, grad_scale=None, found_inf=None):
        kwargs = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=amsgrad,
                      maximize=maximize, grad_scale=grad_scale, found_inf=found_inf)
        if not params:
            return original(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kwargs)
        args = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                list(max_exp_avg_sqs) if amsgrad else [], [], list(state_steps), float(lr), float(beta1),
                float(beta2), float(weight_decay), float(eps), bool(amsgrad), bool(maximize), decoupled,
                grad_scale, found_inf)
        choice = _dispatch.select(OP, params[0], *args)
        if choice.kernel.backend == "torch":
            return original(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kwargs)
        choice.kernel.fn(*args)
    return handler


for _name, _decoupled in (("aten::_fused_adam_", False), ("aten::_fused_adamw_", True)):
    for _overload in ("", ".tensor_lr"):
        _dropin.register_override(FAMILY, _name + _overload, _aten_fused(_decoupled))
