"""fastops.optim.Adam and AdamW: torch.optim.Adam/AdamW with a fused multi-tensor step.

Constructor, hyperparameter checks (torch's ValueError messages), param groups, state keys
(`step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) and the state_dict format are torch's own
(the classes subclass torch.optim.Adam), so a checkpoint loads into torch's optimizer and back.
What differs is step(): per param group, the parameters with a gradient are bucketed by
(device, dtype) once (the grouping is cached until the set of parameters with gradients, the
param groups or the state change) and each bucket is one call of the fused op
fastops::adam_step_ (fastops/ops/adam.py), i.e. one kernel launch, not a loop over tensors.

State layout: exp_avg, exp_avg_sq and max_exp_avg_sq are float32 whatever the parameter dtype
(torch keeps them in the parameter's dtype), `step` is a float32 scalar tensor on the
parameter's device (as torch's fused Adam keeps it). With master_weights=True a float16/bfloat16
parameter also gets `master_param`, a float32 copy the update runs on. Loading a torch
checkpoint upcasts its states to float32; torch loading ours casts them to the parameter dtype.

Sharded parameters (DTensor, as FSDP2's `fully_shard` and tensor parallelism make them): the
step is elementwise, so it runs on each rank's local shard (`DTensor._local_tensor`, updated in
place) with no communication; the states are created as DTensors sharded like their parameter,
so the optimizer's state_dict is what torch.distributed.checkpoint expects.

GradScaler: the class sets `_step_supports_amp_scaling`, so `scaler.step(opt)` hands over
`grad_scale` and `found_inf` and the kernels unscale the gradients and skip the update of a
step with non-finite gradients, as torch's fused Adam does (`step` is not advanced then).
`foreach` and `fused` are accepted and ignored; `capturable` is accepted (steps always live on
the parameter's device); `differentiable=True` raises ValueError. A tensor `lr` is read with
`float(lr)` each step (a device sync for a CUDA tensor).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()

from fastops.ops import adam as _adam_ops

FP32_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_param")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class _Bucket:
    """The parameters of one (device, dtype) in one param group, and their state tensors."""
    params: list = field(default_factory=list)
    exp_avgs: list = field(default_factory=list)
    exp_avg_sqs: list = field(default_factory=list)
    max_exp_avg_sqs: list = field(default_factory=list)
    masters: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    sharded: bool = False  # some are DTensors: the kernel gets their local shards


def _local(tensors: list) -> list:
    """The tensors the kernel updates: each DTensor's local shard (shares its storage)."""
    return [t._local_tensor if isinstance(t, DTensor) else t for t in tensors]


class Adam(torch.optim.Adam):
    """torch.optim.Adam with a fused multi-tensor step (see the module docstring).

    params: float32, float16 or bfloat16 tensors (float64 and complex run through torch's math
    per tensor, inside the same op). master_weights: keep float32 copies of 16-bit parameters.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, master_weights=False):
        if differentiable:
            raise ValueError(f"{type(self).__name__}: differentiable=True is not supported "
                             "(the fused step is not differentiable); use torch.optim.Adam")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=None, maximize=maximize,
                         capturable=capturable, differentiable=False, fused=None,
                         decoupled_weight_decay=decoupled_weight_decay)
        self.master_weights = bool(master_weights)
        self._buckets: dict = {}

    # ---- state -----------------------------------------------------------------------------------

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        """torch's lazy state init, with float32 moments and a device-resident float32 step;
        states loaded from a torch checkpoint are upcast here."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        elif not torch.is_tensor(state["step"]) or state["step"].dtype != torch.float32 \
                or state["step"].device != p.device:
            state["step"] = torch.as_tensor(float(state["step"]), dtype=torch.float32, device=p.device)
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        for key in keys:
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            elif state[key].dtype != torch.float32 and p.dtype != torch.float64:
                state[key] = state[key].float()
        if self.master_weights and p.dtype in _LOW_PRECISION:
            if "master_param" not in state:
                state["master_param"] = p.detach().float()
        return state

    def _bucket_list(self, group: dict, with_grad: list) -> list:
        buckets: dict = {}
        for p in with_grad:
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            state = self._init_state(p, group)
            b = buckets.setdefault((p.device, p.dtype), _Bucket())
            b.sharded = b.sharded or isinstance(p, DTensor)
            b.params.append(p)
            b.exp_avgs.append(state["exp_avg"])
            b.exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                b.max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            if "master_param" in state:
                b.masters.append(state["master_param"])
            b.steps.append(state["step"])
        return list(buckets.values())

    def _grouped(self, index: int, group: dict) -> list:
        """This group's buckets for the parameters that have a gradient now (cached)."""
        with_grad = [p for p in group["params"] if p.grad is not None]
        key = (tuple(map(id, with_grad)), group["amsgrad"])
        cached = self._buckets.get(index)
        if cached is None or cached[0] != key:
            cached = self._buckets[index] = (key, self._bucket_list(group, with_grad))
        return cached[1]

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_buckets"):
            self._buckets.clear()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, then the moments kept (or made) float32 rather than cast to the param dtype."""
        super().load_state_dict(state_dict)
        self._buckets = {}
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        by_id = dict(zip(saved_ids, params))
        for pid, saved in state_dict["state"].items():
            p = by_id.get(pid)
            if p is None or p.dtype == torch.float64:
                continue
            for key in FP32_STATE:
                value = saved.get(key)
                if torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("master_weights", False)
        self._buckets = {}

    # ---- step ------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step for every parameter with a gradient; returns closure()'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            for b in self._grouped(index, group):
                device = b.params[0].device
                scale = _scalar_on(grad_scale, device)
                inf = _scalar_on(found_inf, device)
                torch._foreach_add_(b.steps, 1)
                grads = [p.grad for p in b.params]
                tensors = (b.params, grads, b.exp_avgs, b.exp_avg_sqs, b.max_exp_avg_sqs, b.masters)
                if b.sharded:
                    tensors = tuple(map(_local, tensors))
                step = torch.ops.fastops.adam_step_ if torch.compiler.is_compiling() else _adam_ops.adam_step_eager
                step(
                    *tensors, b.steps, float(group["lr"]), float(beta1), float(beta2),
                    float(group["weight_decay"]), float(group["eps"]), bool(group["amsgrad"]),
                    bool(group["maximize"]), bool(group["decoupled_weight_decay"]), scale, inf, "auto")
                if inf is not None:
                    torch._foreach_sub_(b.steps, [inf] * len(b.steps))
        return loss


def _scalar_on(t, device):
    """GradScaler's grad_scale / found_inf as a one-element float32 tensor on `device`."""
    if t is None:
        return None
    return t.to(device=device, dtype=torch.float32, non_blocking=True).reshape(())


class AdamW(Adam):
    """torch.optim.AdamW (decoupled weight decay, default 1e-2) with the fused step of Adam."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 master_weights=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, master_weights=master_weights)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
