"""fastops.nn.LSTM(proj_size > 0) on a GPU (marker cuda; skipped without one): the cuda and triton
backends (their step kernels, the projection as a torch matmul per step) against torch.nn.LSTM in
float64 on the same inputs: outputs, final states and every gradient, plain and packed input."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastops
from fastops import _dispatch
from utils import DTYPES, assert_close

pytestmark = pytest.mark.cuda


def _rand(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to("cuda", dtype)


@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_lstm_proj(backend, dtype, packed):
    torch.manual_seed(0)
    I, H, P, L, D = 16, 33, 9, 2, 2
    ref = torch.nn.LSTM(I, H, proj_size=P, num_layers=L, bidirectional=True).cuda().double()
    mine = fastops.nn.LSTM(I, H, proj_size=P, num_layers=L, bidirectional=True).cuda().to(dtype)
    mine.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    x = _rand(7, 4, I, dtype=dtype, seed=1).requires_grad_()
    hx = [_rand(L * D, 4, n, dtype=dtype, scale=0.5, seed=2 + i).requires_grad_() for i, n in enumerate((P, H))]
    x_ref = x.detach().double().requires_grad_()
    hx_ref = [h.detach().double().requires_grad_() for h in hx]
    lengths = [7, 3, 5, 1]
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    inp_ref = pack_padded_sequence(x_ref, lengths, enforce_sorted=False) if packed else x_ref
    with fastops.use_backend(backend):
        out, (h, c) = mine(inp, tuple(hx))
        assert _dispatch.last_choice("rnn_proj_layer").kernel.backend == backend
        o = out.data if packed else out
        torch.autograd.backward([o, h, c], [torch.ones_like(o), torch.ones_like(h), torch.ones_like(c)])
    out_ref, (h_ref, c_ref) = ref(inp_ref, tuple(hx_ref))
    r = out_ref.data if packed else out_ref
    torch.autograd.backward([r, h_ref, c_ref], [torch.ones_like(r), torch.ones_like(h_ref), torch.ones_like(c_ref)])
    for a, b in ((o, r), (h, h_ref), (c, c_ref)):
        assert_close(a, b, dtype, reduction=4 * (I + H) * L)
    red = 7 * 4 * 4 * (I + H)
    assert_close(x.grad, x_ref.grad, dtype, reduction=red)
    for a, b in zip(hx, hx_ref):
        assert_close(a.grad, b.grad, dtype, reduction=red)
    pr = dict(ref.named_parameters())
    for name, p in mine.named_parameters():
        assert_close(p.grad, pr[name].grad, dtype, reduction=red)
