"""fastops RNN on a GPU (marker cuda; skipped without one): the cuda (CUDA C++ steps) and triton
backends against torch (cuDNN) on the same inputs, cells and layers, every dtype, packed input."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastops
from fastops import _dispatch
from fastops import functional as F
from utils import DTYPES, assert_close

pytestmark = pytest.mark.cuda
BACKENDS = ["cuda", "triton"]


def _rand(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to("cuda", dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,G", [("rnn_tanh_cell", 1), ("rnn_relu_cell", 1), ("lstm_cell", 4), ("gru_cell", 3)])
def test_cells(kind, G, dtype, backend):
    B, I, H = 5, 33, 129
    x, h, c = _rand(B, I, dtype=dtype, seed=1), _rand(B, H, dtype=dtype, scale=0.5, seed=2), \
        _rand(B, H, dtype=dtype, scale=0.5, seed=3)
    w = [_rand(G * H, n, dtype=dtype, scale=0.2, seed=4 + i) for i, n in enumerate((I, H))]
    b = [_rand(G * H, dtype=dtype, scale=0.2, seed=6 + i) for i in range(2)]
    args = [t.requires_grad_() for t in (x, h, c, *w, *b)]
    ref_args = [t.detach().double().requires_grad_() for t in args]
    vf = getattr(torch._VF, kind)

    def call(fn, a):
        if kind == "lstm_cell":
            return fn(a[0], (a[1], a[2]), *a[3:])
        return (fn(a[0], a[1], *a[3:]),)
    with fastops.use_backend(backend):
        out = call(getattr(F, kind), args)
        assert _dispatch.last_choice("rnn_layer").kernel.backend == backend
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
    ref = call(vf, ref_args)
    torch.autograd.backward(ref, [torch.ones_like(o) for o in ref])
    for o, r in zip(out, ref):
        assert_close(o, r, dtype, reduction=4 * (I + H))
    for a, r in zip(args, ref_args):
        if a.grad is not None:
            assert_close(a.grad, r.grad, dtype, reduction=4 * B * (I + H))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_layers_and_packed(cls_name, backend):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls_name)(16, 32, num_layers=2, bidirectional=True).cuda().double()
    mine = getattr(fastops.nn, cls_name)(16, 32, num_layers=2, bidirectional=True).cuda()
    mine.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = _rand(7, 4, 16, seed=1)
    packed = pack_padded_sequence(x, [7, 3, 5, 1], enforce_sorted=False)
    packed_ref = pack_padded_sequence(x.double(), [7, 3, 5, 1], enforce_sorted=False)
    for inp, inp_ref in ((x, x.double()), (packed, packed_ref)):
        with fastops.use_backend(backend):
            out, _ = mine(inp)
        out_ref, _ = ref(inp_ref)
        o = out.data if hasattr(out, "batch_sizes") else out
        r = out_ref.data if hasattr(out_ref, "batch_sizes") else out_ref
        assert_close(o, r, torch.float32, reduction=256)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gate_products_read_operands_as_stored(dtype):
    """gates_f32 (the input projection and per-step h W_hh^T of the GPU layers) multiplies fp16 /
    bf16 operands as stored into float32 (aten::mm.dtype, tensor cores), not through float32 copies:
    float32 out, and the upcast product's value up to summation order."""
    from fastops.ops import rnn as R
    a, w = _rand(67, 129, dtype=dtype, seed=1), _rand(260, 129, dtype=dtype, seed=2)
    got = R.gates_f32(a, w)
    want = a.double() @ w.double().t()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
