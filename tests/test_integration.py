"""The drop-in on whole models (the examples' own): patch/unpatch round trips, state_dict, deepcopy,
pickling and torch.save, nested and threaded enable(), and torch.compile(fullgraph=True)."""
import copy
import io
import pickle
import sys
import threading
from pathlib import Path

import pytest
import torch

import fastops
from fastops import _dropin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import char_lstm  # noqa: E402
import cnn_digits  # noqa: E402
import mlp  # noqa: E402
import tiny_transformer  # noqa: E402

MODELS = {
    "mlp": (mlp.make_model, lambda: torch.randn(3, 1, 28, 28)),
    "cnn": (cnn_digits.make_model, lambda: torch.randn(2, 1, 28, 28)),
    "char_lstm": (lambda: char_lstm.CharLSTM(20, 8, 16, 2), lambda: torch.randint(0, 20, (2, 5))),
    "tiny_transformer": (lambda: tiny_transformer.TinyTransformer(20, 16, 2, 1, 8),
                         lambda: torch.randint(0, 20, (2, 8))),
}


def build(name):
    torch.manual_seed(0)
    make, inputs = MODELS[name]
    return make(), inputs()


def swappable(model):
    torch_classes = {t for table in _dropin._MODULES.values() for t in table}
    return [m for m in model.modules() if type(m) in torch_classes]




@pytest.mark.parametrize("name", sorted(MODELS))
def test_patch_unpatch_round_trip_keeps_numerics_and_state_dict(name):
    model, x = build(name)
    expected = model(x)
    keys = list(model.state_dict())
    torch_types = [type(m) for m in model.modules()]
    n_swappable = len(swappable(model))
    fastops.patch(model)
    fastops_modules = [m for m in model.modules() if type(m).__module__.startswith("fastops.")]
    assert len(fastops_modules) == n_swappable
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    fastops.unpatch(model)
    assert [type(m) for m in model.modules()] == torch_types
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_patched_state_dict_loads_both_ways(name):
    model, x = build(name)
    patched, _ = build(name)
    torch.manual_seed(1)
    for p in patched.parameters():
        torch.nn.init.normal_(p)
    fastops.patch(patched).load_state_dict(model.state_dict())
    torch.testing.assert_close(patched(x), model(x), rtol=1e-5, atol=1e-5)
    fresh, _ = build(name)
    torch.manual_seed(2)
    for p in fresh.parameters():
        torch.nn.init.normal_(p)
    fresh.load_state_dict(patched.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deepcopy_pickle_and_torch_save_keep_the_patched_model(name):
    model, x = build(name)
    fastops.patch(model)
    expected = model(x)
    classes = [type(m) for m in model.modules()]
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
                  torch.load(buffer, weights_only=False)):
        assert [type(m) for m in clone.modules()] == classes
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_patched_model_matches_eager_without_graph_breaks(name):
    model, x = build(name)
    fastops.patch(model)
    expected = model(x)
    torch._dynamo.reset()
    # dynamo refuses every nn.RNNBase subclass unless allow_rnn is set (README, recurrent layers)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)


def test_compiled_with_dynamic_shapes():
    model, _ = build("tiny_transformer")
    fastops.patch(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    for length in (3, 5, 8):
        x = torch.randint(0, 20, (2, length))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_enable_nests_and_restores_the_outer_scope():
    families = set(_dropin._valid_families())
    with fastops.enable():
        assert _dropin.enabled_families() == families
        with fastops.enable(include=["softmax"]):
            assert _dropin.enabled_families() == {"softmax"}
            with fastops.enable(exclude=["softmax"]):
                assert _dropin.enabled_families() == families - {"softmax"}
            assert _dropin.enabled_families() == {"softmax"}
        assert _dropin.enabled_families() == families
    assert _dropin.enabled_families() == frozenset()


def _fastops_kernel_on(aten: str, key: str) -> bool:
    """Whether a Python (fastops) kernel is registered for `aten` at dispatch key `key`."""
    table = torch._C._dispatch_dump(aten)
    return any(line.startswith(key + ":") and "_dropin.py" in line
               for line in table.splitlines())


def test_enable_registers_only_the_families_its_scopes_name():
    """Ops of families no scope asked for keep torch's kernel: no Python hop on aten::mm under
    enable(include=["softmax"]); a scope naming matmul adds it; the last scope leaving removes all."""
    assert not _fastops_kernel_on("aten::mm", "CPU")
    with fastops.enable(include=["softmax"]):
        assert _fastops_kernel_on("aten::_softmax", "CPU")
        assert not _fastops_kernel_on("aten::mm", "CPU")
        with fastops.enable(include=["matmul"]):
            assert _fastops_kernel_on("aten::mm", "CPU")
            a, b = torch.randn(70, 90), torch.randn(90, 80)
            torch.testing.assert_close(a @ b, torch.mm(a, b))
        torch.testing.assert_close(torch.softmax(a, -1), torch.softmax(a.double(), -1).float())
    assert not _fastops_kernel_on("aten::mm", "CPU") and not _fastops_kernel_on("aten::_softmax", "CPU")


def test_enable_covers_sdpa_on_every_device_above_autograd():
    """torch's SDPA is overridden at the composite op, on CPU and CUDA, with and without autograd,
    so torch's own backend choice (flash, efficient, cuDNN, math) never bypasses fastops."""
    with fastops.enable(include=["attention"]):
        for key in ("AutogradCPU", "AutogradCUDA", "CPU", "CUDA"):
            assert _fastops_kernel_on("aten::scaled_dot_product_attention", key), key


def test_enable_from_many_threads_is_safe():
    x = torch.randn(64, 300)
    expected = torch.softmax(x, -1)
    errors = []

    def work():
        try:
            for _ in range(20):
                with fastops.enable(include=["softmax"]):
                    torch.testing.assert_close(torch.softmax(x, -1), expected)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _dropin.enabled_families() == frozenset()


@pytest.mark.parametrize("bad", [42, "model"])
def test_patch_rejects_a_non_module(bad):
    with pytest.raises(ValueError, match="torch.nn.Module"):
        fastops.patch(bad)


def test_patch_rejects_an_unknown_family_naming_the_valid_ones():
    model, _ = build("mlp")
    with pytest.raises(ValueError, match="valid names are"):
        fastops.patch(model, include=["no_such_family"])
