"""GPU tests of the fused Adam kernels (csrc/cuda/adam.cu and fastops/triton/adam.py on a GPU).

fastops.optim.Adam/AdamW under use_backend("cuda") and ("triton") against
torch.optim.Adam/AdamW(foreach=False) on the same CUDA params and grads, float32 trajectories of
20 steps; 16-bit params with master weights against torch in float32. Shapes reach every path of
the CUDA launcher: more tensors than one table holds (24), more chunks than one launch holds
(320 x 65536 elements), 128-bit and scalar (misaligned) accesses, numel % 4 tails, zero-size.
Skipped where no GPU is present (none has run yet: the development machine has no GPU).
"""
import pytest
import torch

import fastops
import fastops.optim
from fastops import _dispatch
from utils import assert_close

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKENDS = ["cuda", "triton"]


def _shapes(case):
    if case == "many_tensors":
        return [(7 + i,) for i in range(60)]                   # 3 tables of 24 tensors
    if case == "many_chunks":
        return [(321 * 65536 + 5,), (3,)]                      # > one launch of 320 chunks
    return [(17,), (5, 33), (0,), (4099,), (2, 65536 + 3)]     # tails, zero-size, 2 chunks


def _train(cls, params, backend=None, steps=20, misalign=False, **kw):
    if misalign:  # storage offset of one element: scalar path
        params = [torch.cat([p.new_zeros(1), p.flatten()])[1:].view_as(p) for p in params]
    ps = [p.clone().requires_grad_() if not misalign else p.requires_grad_() for p in params]
    opt = cls(ps, lr=0.01, **kw)
    g = torch.Generator(device="cuda").manual_seed(0)
    with (fastops.use_backend(backend) if backend else torch.no_grad()):
        for _ in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, device="cuda", generator=g).to(p.dtype)
            opt.step()
    return ps


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["mixed", "many_tensors", "many_chunks"])
@pytest.mark.parametrize("kw", [dict(), dict(amsgrad=True, weight_decay=0.1, maximize=True)], ids=str)
def test_float32_matches_torch(backend, case, kw):
    torch.manual_seed(0)
    params = [torch.randn(s, device="cuda") for s in _shapes(case)]
    steps = 3 if case == "many_chunks" else 20
    got = _train(fastops.optim.AdamW, params, backend, steps=steps, **kw)
    assert _dispatch.last_choice("adam_step").kernel.backend == backend
    want = _train(torch.optim.AdamW, params, steps=steps, foreach=False, **kw)
    for a, b in zip(got, want):
        assert_close(a.detach(), b.detach(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned(backend):
    torch.manual_seed(0)
    params = [torch.randn(s, device="cuda") for s in _shapes("mixed")]
    got = _train(fastops.optim.Adam, params, backend, misalign=True)
    want = _train(torch.optim.Adam, params, foreach=False)
    for a, b in zip(got, want):
        assert_close(a.detach(), b.detach(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_master_weights(backend, dtype):
    torch.manual_seed(0)
    params = [torch.randn(s, device="cuda").to(dtype) for s in _shapes("mixed")]
    got = _train(fastops.optim.AdamW, params, backend, master_weights=True, weight_decay=0.1)
    want = _train(torch.optim.AdamW, [p.float() for p in params], foreach=False, weight_decay=0.1)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        assert_close(a.detach(), b.detach(), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_inf_skip(backend):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8).cuda()
    opt = fastops.optim.Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with fastops.use_backend(backend):
        loss = model(torch.randn(4, 16, device="cuda")).sum() * float("inf")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
