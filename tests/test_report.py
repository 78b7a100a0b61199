"""python -m fastops.report: compiles the softmax Triton kernels for sm_80 and sm_90a for real
(no GPU needed; float32 configs only, to stay at a few seconds) and reads their resource use."""

import pytest

from fastops import report

ARCHS = ("sm_80", "sm_90a")


@pytest.fixture(scope="module")
def softmax_rows():
    return report.collect_rows(ARCHS, families=["softmax"], kernels=r"\[fp32\]$", include_cuda=False)


def test_softmax_rows_every_kernel_and_arch(softmax_rows):
    assert not [r for r in softmax_rows if "error" in r]
    seen = {(r["kernel"], r["arch"]) for r in softmax_rows}
    for name in ("fwd_onepass", "bwd_onepass", "fwd_looped", "bwd_looped"):
        for arch in ARCHS:
            assert (f"softmax_{name}[fp32]", arch) in seen


def test_softmax_rows_resources(softmax_rows):
    for r in softmax_rows:
        assert r["source"] == "triton"
        assert r["registers"] > 0, r
        assert r["spills"] == 0, r
        assert r["shared_bytes"] >= 0 and 0 < r["occupancy"] <= 1, r
        assert r["tensor_cores"] is False, r   # softmax has no matmul
        assert set(r) == {"kernel", "source", "arch", "config", "registers", "spills", "stack_bytes",
                          "shared_bytes", "occupancy", "tensor_cores"}


def test_table_lists_every_row(softmax_rows):
    lines = report.format_table(softmax_rows).splitlines()
    assert len(lines) == len(softmax_rows) + 2 and lines[0].startswith("kernel")


def test_occupancy():
    # 32 regs, 4 warps: registers allow 16 blocks, threads allow 16 -> full occupancy
    assert report.occupancy("sm_80", 32, 0, 128) == 1.0
    # 128 regs per thread: 64K / (128 * 32) = 16 warps -> 25 %
    assert report.occupancy("sm_90a", 128, 0, 256) == 0.25
    # 100 KiB of shared memory per block: one block on sm_80, two on sm_90
    assert report.occupancy("sm_80", 32, 100 * 1024, 256) == 0.125
    assert report.occupancy("sm_90a", 32, 100 * 1024, 256) == 0.25
    # small blocks hit the 32 blocks per SM limit
    assert report.occupancy("sm_80", 16, 0, 32) == 0.5
    assert report.occupancy("sm_80", 32, 0, None) is None


def test_compile_failure_becomes_error_row(tmp_path):
    broken = {"kernel": "broken", "fn": None, "signature": {}, "constexprs": {}, "config": "c",
              "num_warps": 4, "num_stages": 1}
    (row,) = report.triton_rows(["sm_80"], [broken], tmp_path)
    assert row["kernel"] == "broken" and row["registers"] is None and row["error"]


def test_failed_kernel_exits_nonzero(monkeypatch, capsys):
    failed = {"kernel": "broken", "source": "triton", "arch": "sm_80", "config": "c",
              "registers": None, "spills": None, "shared_bytes": None, "occupancy": None,
              "tensor_cores": None, "error": "CompilationError: boom"}
    monkeypatch.setattr(report, "collect_rows", lambda archs, kernels=None: [failed])
    assert report.main(["--arch", "sm_80"]) == 1
    assert "FAILED broken c sm_80: CompilationError: boom" in capsys.readouterr().err


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        report.main(["--arch", "sm_75"])
    assert exc.value.code == 2
