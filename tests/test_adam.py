"""fastops.optim.Adam/AdamW and fastops::adam_step_ against torch.optim.Adam/AdamW.

Trajectories over 20+ steps for option combinations, dtypes and the cpu and triton (interpreter)
backends; param groups, None grads, zero-size and non-contiguous params; state_dict round trips
both ways; GradScaler inf-skip; torch's ValueError wording; opcheck; determinism; dispatch.

References. float32: torch.optim.Adam/AdamW(foreach=False) on the same params and grads (the
kernels follow its order of operations, so the two agree to a few float32 ulps). float16 and
bfloat16: fastops keeps float32 moments (torch keeps them in the param dtype), so its trajectory
is compared (a) with master_weights=True against torch run in float32 from the same rounded start,
within the dtype's tolerance, and (b) without master weights against fastops' own torch backend
(`adam_ref`, torch ops with the same state layout). Torch itself in float16 is no reference:
with eps=1e-8 (0 in float16) its float16 run overflows to inf within 20 steps.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastops
import fastops.optim
from fastops import _dispatch
from fastops.ops.adam import adam_ref
from utils import ATOL, RTOL, assert_close

ROOT = Path(__file__).resolve().parents[1]

BACKENDS = ["cpu", "triton"]
STEPS = 20
SHAPES = [(17,), (5, 33), (0,), (3, 1, 7), (129,)]

OPTIONS = {
    "plain": dict(),
    "wd": dict(weight_decay=0.1),
    "amsgrad": dict(amsgrad=True),
    "maximize_wd": dict(maximize=True, weight_decay=0.1),
    "all_lr_tensor": dict(amsgrad=True, maximize=True, weight_decay=0.1, lr=torch.tensor(0.02)),
}
CLASSES = {"Adam": (fastops.optim.Adam, torch.optim.Adam), "AdamW": (fastops.optim.AdamW, torch.optim.AdamW)}


def _params(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def _grads(params, step, none_every=0):
    """Deterministic grads for `step`; with none_every=k, param i has no grad when (i + step) % k == 0."""
    g = torch.Generator().manual_seed(1000 + step)
    out = []
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g)
        out.append(None if none_every and (i + step) % none_every == 0 else grad)
    return out


def _run(opt_cls, params, steps=STEPS, none_every=0, backend=None, grad_dtype=None, **kw):
    """Trains leaf copies of params for `steps` steps; returns (params, optimizer). Grads are
    rounded to grad_dtype (default: the param's) before use."""
    ps = [p.clone().requires_grad_() for p in params]
    kw = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()}
    opt = opt_cls(ps, lr=kw.pop("lr", 0.01), **kw)
    ctx = fastops.use_backend(backend) if backend else _nullcontext()
    with ctx:
        for step in range(steps):
            for p, g in zip(ps, _grads(ps, step, none_every)):
                p.grad = None if g is None else g.to(grad_dtype or p.dtype).to(p.dtype)
            opt.step()
    return ps, opt


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _torch_kw(kw):
    return dict(kw, foreach=False)


# ---- trajectories -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("opts", list(OPTIONS))
def test_float32_trajectory_matches_torch(backend, cls, opts):
    ours, theirs = CLASSES[cls]
    params = _params(torch.float32)
    got, opt = _run(ours, params, backend=backend, **OPTIONS[opts])
    assert _dispatch.last_choice("adam_step").kernel.backend == backend, fastops.explain()
    want, _ = _run(theirs, params, **_torch_kw(OPTIONS[opts]))
    for a, b in zip(got, want):
        assert_close(a.detach(), b.detach(), torch.float32)
    st = opt.state[got[0]]
    assert float(st["step"]) == STEPS and st["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("opts", ["wd", "all_lr_tensor"])
def test_low_precision_master_weights_track_float32_torch(backend, dtype, opts):
    params = _params(dtype)
    got, opt = _run(fastops.optim.AdamW, params, backend=backend, master_weights=True, **OPTIONS[opts])
    want, _ = _run(torch.optim.AdamW, [p.float() for p in params], grad_dtype=dtype, **_torch_kw(OPTIONS[opts]))
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close(a.detach(), b.detach(), dtype)
        if a.numel():
            assert opt.state[a]["master_param"].dtype == torch.float32
            assert_close(opt.state[a]["master_param"], b.detach(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("opts", ["plain", "amsgrad", "maximize_wd"])
def test_low_precision_matches_reference(backend, dtype, cls, opts):
    ours, _ = CLASSES[cls]
    params = _params(dtype)
    got, _ = _run(ours, params, backend=backend, **OPTIONS[opts])
    want, _ = _run(ours, params, backend="torch", **OPTIONS[opts])
    assert _dispatch.last_choice("adam_step").kernel.backend == "torch"
    for a, b in zip(got, want):
        # one rounding of the param per step: at most a unit in the last place apart
        torch.testing.assert_close(a.detach().float(), b.detach().float(), rtol=RTOL[dtype], atol=ATOL[dtype])


# ---- param layouts, groups, None grads ------------------------------------------------------------

def _layout_tensors():
    """Fresh (same every call) tensors: two bases for non-contiguous views, a zero-size, two plain."""
    g = torch.Generator().manual_seed(3)
    return [torch.randn(14, 9, generator=g), torch.randn(9, 14, generator=g), torch.randn(0, 3),
            torch.randn(40, generator=g), torch.randn(2, 3, generator=g)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_none_grads_views_and_zero_size(backend):
    def train(cls, **kw):
        base_a, base_b, *rest = _layout_tensors()
        views = [base_a.t(), base_b[::2, 1:8]] + rest  # transposed (dense) and strided slice
        ps = [v.detach().requires_grad_() for v in views]
        assert not ps[0].is_contiguous() and not ps[1].is_contiguous()
        opt = cls([{"params": ps[:2], "lr": 0.05, "weight_decay": 0.2},
                   {"params": ps[2:], "betas": (0.8, 0.99), "amsgrad": True}], lr=0.01, **kw)
        ctx = fastops.use_backend(backend) if cls.__module__.startswith("fastops") else _nullcontext()
        with ctx:
            for step in range(STEPS):
                for p, g in zip(ps, _grads(ps, step, none_every=3)):
                    p.grad = g
                opt.step()
        return ps, opt

    got, opt = train(fastops.optim.Adam)
    want, ref = train(torch.optim.Adam, foreach=False)
    for a, b in zip(got, want):
        assert a.stride() == b.stride()
        assert_close(a.detach(), b.detach(), torch.float32)
    for a, b in zip(got, want):  # None grads skipped: steps counted as torch counts them
        assert float(opt.state[a]["step"]) == float(ref.state[b]["step"])


def test_param_without_grad_is_untouched_and_has_no_state():
    p, q = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    q0 = q.detach().clone()
    opt = fastops.optim.Adam([p, q])
    p.grad = torch.ones(5)
    opt.step()
    assert torch.equal(q.detach(), q0) and q not in opt.state and float(opt.state[p]["step"]) == 1


def test_eager_step_bumps_version_counters_like_an_inplace_op():
    """The eager step skips the custom-op wrapper; autograd must still see the in-place update of
    params and moments (a graph that saved a param before the step must refuse to backward)."""
    p = torch.randn(5, requires_grad=True)
    y = (p * p).sum()  # saves p
    p.grad = torch.randn(5)
    opt = fastops.optim.Adam([p])
    before = p._version
    opt.step()
    assert p._version > before and opt.state[p]["exp_avg"]._version > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_training_losses_match_torch():
    """A small MLP trained twice from one seed, torch.optim.AdamW then fastops.optim.AdamW:
    per-step losses agree (float32)."""
    def train(opt_cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
        opt = opt_cls(model.parameters(), lr=3e-3, weight_decay=0.05)
        x, y = torch.randn(64, 12), torch.randint(0, 3, (64,))
        losses = []
        for _ in range(30):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    want = train(torch.optim.AdamW)
    got = train(fastops.optim.AdamW)
    assert got[-1] < got[0] * 0.8
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_step_compiles_fullgraph():
    """opt.step under torch.compile(fullgraph=True): no graph break, same numbers as eager."""
    def make():
        ps = _params(torch.float32, [(5, 3), (7,)])
        ps = [p.requires_grad_() for p in ps]
        for i, p in enumerate(ps):
            p.grad = torch.full_like(p, 0.1 * (i + 1))
        return ps, fastops.optim.AdamW(ps, lr=1e-2, amsgrad=True)

    ps, opt = make()
    step = torch.compile(opt.step, fullgraph=True, backend="aot_eager")
    qs, ref = make()
    for _ in range(3):
        step()
        ref.step()
    for a, b in zip(ps, qs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(opt.state[ps[0]]["step"]) == 3


# ---- state_dict ----------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["fastops_to_torch", "torch_to_fastops"])
@pytest.mark.parametrize("cls", list(CLASSES))
def test_state_dict_round_trip(direction, cls):
    ours, theirs = CLASSES[cls]
    first, second = (ours, theirs) if direction == "fastops_to_torch" else (theirs, ours)
    kw = dict(amsgrad=True, weight_decay=0.1)
    params = _params(torch.float32)
    ps, opt = _run(first, params, steps=5, **kw)
    sd = copy.deepcopy(opt.state_dict())  # as a checkpoint on disk: no tensor shared with `opt`
    # continue: the same optimizer for 5 more steps vs a fresh `second` loaded from the checkpoint
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = second(qs, lr=0.01, **kw)
    opt2.load_state_dict(sd)
    assert set(opt2.state_dict()["state"][0]) >= {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    for step in range(5, 10):
        for a, b, g in zip(ps, qs, _grads(ps, step)):
            a.grad, b.grad = g, g.clone()
        opt.step()
        opt2.step()
    for a, b in zip(ps, qs):
        assert_close(a.detach(), b.detach(), torch.float32)
    assert float(opt2.state[qs[0]]["step"]) == 10


def test_state_dict_keeps_float32_moments_for_bf16():
    ps, opt = _run(fastops.optim.Adam, _params(torch.bfloat16), steps=3)
    opt2 = fastops.optim.Adam([p.detach().clone().requires_grad_() for p in ps])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert b["exp_avg"].dtype == torch.float32 and torch.equal(a["exp_avg"], b["exp_avg"])


# ---- GradScaler ----------------------------------------------------------------------------------

def test_grad_scaler_skips_inf_steps_like_torch_fused():
    def train(opt_cls, **kw):
        torch.manual_seed(0)
        model = torch.nn.Linear(7, 3)
        opt = opt_cls(model.parameters(), lr=0.05, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        history = []
        for step in range(6):
            x = torch.randn(4, 7)
            loss = model(x).pow(2).sum()
            if step == 2:
                loss = loss * float("inf")  # non-finite grads: the step must be skipped
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            history.append([p.detach().clone() for p in model.parameters()])
        return history, opt, scaler

    got, opt, s1 = train(fastops.optim.Adam)
    want, ref, s2 = train(torch.optim.Adam, fused=True)
    assert all(torch.equal(a, b) for a, b in zip(got[1], got[2]))  # step 2 changed nothing
    for ga, wa in zip(got, want):
        for a, b in zip(ga, wa):
            assert_close(a, b, torch.float32)
    assert s1.get_scale() == s2.get_scale() == 512.0
    p = next(iter(opt.state))
    assert float(opt.state[p]["step"]) == 5  # the skipped step is not counted


def test_op_unscales_grads_in_place_and_found_inf_skips():
    for backend in ["cpu", "triton", "torch"]:
        p, g = torch.randn(10), torch.randn(10)
        m, v, s = torch.zeros(10), torch.zeros(10), torch.ones(())
        g0, p0 = g.clone(), p.clone()
        args = (0.1, 0.9, 0.999, 0.0, 1e-8, False, False, False)
        torch.ops.fastops.adam_step_([p], [g], [m], [v], [], [], [s], *args, torch.tensor(4.0),
                                     torch.tensor(1.0), backend)
        assert torch.equal(p, p0) and torch.equal(g, g0) and not m.any()
        torch.ops.fastops.adam_step_([p], [g], [m], [v], [], [], [s], *args, torch.tensor(4.0),
                                     torch.tensor(0.0), backend)
        torch.testing.assert_close(g, g0 / 4)
        assert not torch.equal(p, p0)


# ---- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(eps=-1e-8), dict(betas=(1.0, 0.999)),
                                dict(betas=(0.9, -0.1)), dict(weight_decay=float("nan")),
                                dict(weight_decay=-0.1), dict(lr=torch.tensor([0.1, 0.2])),
                                dict(betas=(0.9, torch.tensor(0.99)))], ids=str)
@pytest.mark.parametrize("cls", list(CLASSES))
def test_bad_hyperparameters_raise_torchs_value_error(cls, kw):
    ours, theirs = CLASSES[cls]
    with pytest.raises(ValueError) as expected:
        theirs([torch.zeros(2, requires_grad=True)], **kw)
    with pytest.raises(ValueError) as got:
        ours([torch.zeros(2, requires_grad=True)], **kw)
    assert str(got.value) == str(expected.value)


def test_differentiable_rejected_and_foreach_fused_ignored():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="differentiable"):
        fastops.optim.Adam(p, differentiable=True)
    fastops.optim.AdamW(p, foreach=True, fused=True)  # accepted, ignored


def test_op_checks_lists():
    p = [torch.zeros(3)]
    with pytest.raises(RuntimeError, match="exp_avgs must hold one tensor per param"):
        torch.ops.fastops.adam_step_(p, [torch.zeros(3)], [], [torch.zeros(3)], [], [], [torch.ones(())],
                                     0.1, 0.9, 0.999, 0.0, 1e-8, False, False, False, None, None, "cpu")
    with pytest.raises(RuntimeError, match=r"grads\[0\] must have the shape"):
        torch.ops.fastops.adam_step_(p, [torch.zeros(4)], [torch.zeros(3)], [torch.zeros(3)], [], [],
                                     [torch.ones(())], 0.1, 0.9, 0.999, 0.0, 1e-8, False, False, False,
                                     None, None, "cpu")


def test_binding_validates_direct_calls():
    from fastops import _ext
    p, m = [torch.zeros(3)], [torch.zeros(3)]
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] must be float32"):
        _ext.C.adam_step(p, [torch.zeros(3)], [torch.zeros(3, dtype=torch.float64)], m, [], [], [torch.ones(())],
                         0.1, 0.9, 0.999, 0.0, 1e-8, False, False, False)
    with pytest.raises(RuntimeError, match=r"params\[0\] must be contiguous"):
        _ext.C.adam_step([torch.zeros(3, 2).t()], [torch.zeros(2, 3)], [torch.zeros(2, 3)], [torch.zeros(2, 3)],
                         [], [], [torch.ones(())], 0.1, 0.9, 0.999, 0.0, 1e-8, False, False, False)


# ---- dispatch ------------------------------------------------------------------------------------

def test_float64_falls_back_to_torch_and_strict_raises():
    params = _params(torch.float64, [(5,), (3, 2)])
    got, _ = _run(fastops.optim.Adam, params, steps=3)
    assert _dispatch.last_choice("adam_step").kernel.backend == "torch"
    assert "float64" in _dispatch.last_choice("adam_step").reason
    want, _ = _run(torch.optim.Adam, params, steps=3, foreach=False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    fastops.set_strict(True)
    with pytest.raises(NotImplementedError, match="adam_step"):
        _run(fastops.optim.Adam, params, steps=1)


@pytest.mark.parametrize("backend", ["auto", "cpu", "triton", "torch"])
def test_opcheck(backend):
    def args(amsgrad):
        g = torch.Generator().manual_seed(0)
        shapes = [(5,), (3, 4)]
        lists = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
        lists[3] = [t.abs() for t in lists[3]]
        vmax = [torch.rand(s, generator=g) for s in shapes] if amsgrad else []
        steps = [torch.tensor(2.0), torch.tensor(3.0)]
        return (*lists, vmax, [], steps, 0.01, 0.9, 0.999, 0.1, 1e-8, amsgrad, False, True,
                torch.tensor(2.0), torch.tensor(0.0), backend)
    for amsgrad in (False, True):
        torch.library.opcheck(torch.ops.fastops.adam_step_.default, args(amsgrad))


def test_deterministic():
    """10 runs on 3 x 70k elements (more than one thread's worth) are bitwise equal."""
    params = _params(torch.float32, [(70001,), (65536,), (70000,)])
    runs = [_run(fastops.optim.AdamW, params, steps=2, backend="cpu", amsgrad=True)[0] for _ in range(10)]
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


_ISA_RUN = """
import torch, fastops.optim
torch.manual_seed(0)
p = torch.randn(1000, requires_grad=True)
o = fastops.optim.AdamW([p], amsgrad=True)
for _ in range(3):
    p.grad = torch.randn(1000)
    o.step()
print(repr(p.detach().double().sum().item()))
"""


def _python(code: str, **env) -> str:
    """stdout of `code` in a fresh process from this checkout (no interpreter)."""
    full = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    full.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


def test_cpu_isa_paths_agree():
    """The baseline path (a fresh process, FASTOPS_CPU_ISA=baseline) gives bitwise the numbers of
    the widest path this CPU runs: no FMA contraction, the same rounding everywhere."""
    ns = {}
    exec(_ISA_RUN.replace("print(", "result = ("), ns)
    assert _python(_ISA_RUN, FASTOPS_CPU_ISA="baseline") == ns["result"]


def test_explain_names_the_backend():
    _run(fastops.optim.Adam, _params(torch.float32, [(8,)]), steps=1)
    assert "adam_step: cpu" in fastops.explain()


# ---- fastops.enable(): torch's fused Adam on fastops --------------------------------------------------

@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("lr", [0.01, torch.tensor(0.01)], ids=["lr_float", "lr_tensor"])
def test_enable_runs_torch_fused_adam_on_fastops(cls, lr):
    _, theirs = CLASSES[cls]
    kw = dict(lr=lr, fused=True, amsgrad=True, weight_decay=0.1)
    with fastops.enable(include="optim"):
        got, _ = _run(theirs, _params(torch.float32), steps=10, **kw)
    assert _dispatch.last_choice("adam_step").kernel.backend == "cpu", fastops.explain()
    _dispatch.clear_history()
    want, _ = _run(theirs, _params(torch.float32), steps=10, **kw)
    assert _dispatch.last_choice("adam_step") is None  # torch's own kernel again
    for a, b in zip(got, want):
        assert_close(a.detach(), b.detach(), torch.float32)


def test_enable_leaves_bf16_fused_adam_to_torch():
    """torch's fused Adam keeps bfloat16 moments for bfloat16 params: not the kernels' layout."""
    with fastops.enable():
        got, _ = _run(torch.optim.Adam, _params(torch.bfloat16), steps=3, fused=True)
    choice = _dispatch.last_choice("adam_step")
    assert choice.kernel.backend == "torch" and "float32" in choice.reason
    want, _ = _run(torch.optim.Adam, _params(torch.bfloat16), steps=3, fused=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


# ---- kernel report ---------------------------------------------------------------------------------

def test_triton_kernel_compiles_without_spills():
    """The Triton kernel compiled for sm_90a (a fresh process: the report needs the real JIT,
    not the interpreter) uses registers and spills nothing."""
    out = _python("from fastops import report\n"
                  "rows = report.collect_rows(['sm_90a'], families=['adam'], "
                  "kernels=r'adam_step(_full)?\\[(fp32|bf16)\\]$', include_cuda=False)\n"
                  "print(repr([(r['kernel'], r.get('registers'), r.get('spills'), r.get('error')) for r in rows]))")
    rows = eval(out)
    assert len(rows) == 4, rows
    assert all(regs and spills == 0 and err is None for _, regs, spills, err in rows), rows


# ---- large -----------------------------------------------------------------------------------------

@pytest.mark.large
def test_large_tensor_offsets():
    """64-bit offsets on the CPU kernel.

    A tensor of more than 2^31 elements does not fit: even with bfloat16 params and grads the
    float32 moments make 12 bytes per element, 26 GB for 2^31 elements (the machine has 24 GB).
    So this uses the largest tensor that fits in about 18 GB, 1.5e9 elements: its float32
    moments reach byte offsets of 6e9 (over 2^32), and its chunk list runs to ~92k chunks, so a
    32-bit byte offset or a 32-bit chunk base would write the wrong place. Only the head and the
    tail are checked (against the reference on the same slices), the rest is checked to have
    moved.
    """
    n = 1_500_000_000
    p = torch.ones(n, dtype=torch.bfloat16)
    g = torch.full((n,), 0.5, dtype=torch.bfloat16)
    g[-17:] = -0.25
    m, v, s = torch.zeros(n), torch.zeros(n), torch.ones(())
    head = [t[:64].clone() for t in (p, g, m, v)]
    tail = [t[-64:].clone() for t in (p, g, m, v)]
    args = (0.01, 0.9, 0.999, 0.0, 1e-8, False, False, False)
    torch.ops.fastops.adam_step_([p], [g], [m], [v], [], [], [s], *args, None, None, "cpu")
    for sl, ref in ((slice(0, 64), head), (slice(n - 64, n), tail)):
        rp, rg, rm, rv = ref
        adam_ref([rp], [rg], [rm], [rv], [], [], [s], *args)
        assert torch.equal(p[sl], rp) and torch.equal(m[sl], rm) and torch.equal(v[sl], rv)
    assert bool((m[:: 1 << 20] != 0).all())
