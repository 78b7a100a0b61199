"""What every example shares: the torch/fastops switch, data, a progress bar, the metrics line, plots.

The switch is one flag, `--backend torch|fastops|both`. "fastops" means: the model is patched
(`fastops.patch`), torch's own ops run under `fastops.enable()`, and the optimizer comes from
`fastops.optim`; everything else (model code, data, seed, initial weights) is identical.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

import fastops

BACKENDS = ("torch", "fastops")


def parser(doc: str, **defaults) -> argparse.ArgumentParser:
    """The flags every example takes; `defaults` sets each example's own values (steps, lr, ...)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS + ("both",), default="both",
                   help="torch, fastops, or both side by side (default)")
    p.add_argument("--steps", type=int, default=defaults.get("steps", 200), help="optimizer steps")
    p.add_argument("--batch", type=int, default=defaults.get("batch", 64))
    p.add_argument("--lr", type=float, default=defaults.get("lr", 1e-3))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plot", metavar="PNG", help="write the loss curves (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def backends(args) -> tuple[str, ...]:
    return BACKENDS if args.backend == "both" else (args.backend,)


@contextlib.contextmanager
def running_on(backend: str):
    """torch's own ops go to fastops kernels inside this block when backend == "fastops"."""
    if backend == "fastops":
        with fastops.enable():
            yield
    else:
        yield


def prepare(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    """The model as the backend runs it: fastops swaps its supported modules in place."""
    return fastops.patch(model) if backend == "fastops" else model


def optimizer(name: str, params: Iterable, backend: str, **kwargs) -> torch.optim.Optimizer:
    """torch.optim.<name> or fastops.optim.<name> ("Adam", "AdamW") with the same arguments."""
    module = fastops.optim if backend == "fastops" and hasattr(fastops.optim, name) else torch.optim
    return getattr(module, name)(params, **kwargs)


class Progress:
    """A one-line progress bar on stderr (off with --quiet or when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, quiet: bool = False):
        self.total, self.label, self.start = max(total, 1), label, time.perf_counter()
        self.enabled = not quiet and sys.stderr.isatty()

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // self.total
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label:8s} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
                         f" loss {loss:.4f} {rate:.1f} it/s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


@dataclass
class Run:
    """One backend's training run: the loss after each step, wall time, and the final metrics."""
    backend: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    kernels: str = ""


def train(backend: str, steps: int, step: Callable[[int], float], quiet: bool = False) -> Run:
    """Calls step(i) -> loss for i < steps under the backend, timing the whole loop."""
    run, bar = Run(backend), Progress(steps, backend, quiet)
    fastops.clear_history()
    with running_on(backend):
        start = time.perf_counter()
        for i in range(steps):
            run.losses.append(step(i))
            bar.update(i + 1, run.losses[-1])
        run.seconds = time.perf_counter() - start
    bar.close()
    run.kernels = fastops.explain()
    return run


def compare(args, make_model: Callable[[], torch.nn.Module], make_batches: Callable[[], Iterable],
            loss_fn: Callable, metrics_fn: Callable[[torch.nn.Module], dict], title: str,
            optim: str = "Adam", **optim_kwargs) -> list[Run]:
    """Trains the same model (same initial weights, same batches) on each backend of --backend.

    make_batches() gives a fresh iterator of (x, y) batches; loss_fn(model, x, y) -> scalar loss;
    metrics_fn(model) -> {name: value}, evaluated after training under the same backend.
    """
    torch.manual_seed(args.seed)
    init = make_model().state_dict()
    runs = []
    for backend in backends(args):
        model = make_model().to(args.device)
        model.load_state_dict(init)
        model = prepare(model, backend)
        opt = optimizer(optim, model.parameters(), backend, lr=args.lr, **optim_kwargs)
        data = iter(make_batches())

        def step(_, model=model, opt=opt, data=data):
            x, y = (t.to(args.device) for t in next(data))
            loss = loss_fn(model, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        run = train(backend, args.steps, step, args.quiet)
        with running_on(backend):
            run.metrics = metrics_fn(model)
        runs.append(run)
    report(runs, args.plot, title)
    return runs


def report(runs: list[Run], plot: Optional[str] = None, title: str = "") -> None:
    """Prints which kernels ran, then one metrics line per backend (the last lines of output)."""
    for run in runs:
        if run.backend == "fastops":
            print("fastops kernels that ran (fastops.explain()):")
            print("  " + (run.kernels.replace("\n", "\n  ") if run.kernels else "(none)"))
    for run in runs:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in run.metrics.items())
        print(f"{run.backend:8s} first loss {run.losses[0]:.4f}  last loss {run.losses[-1]:.4f}  "
              f"{metrics}  {run.seconds:.2f} s ({run.seconds / len(run.losses) * 1e3:.1f} ms/step)")
    if plot:
        plot_losses(runs, plot, title)


def plot_losses(runs: list[Run], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        ax.plot(run.losses, label=f"{run.backend} ({run.seconds:.1f} s)", alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def digits(size: int = 28, seed: int = 0):
    """scikit-learn's bundled 8x8 handwritten digits, upsampled to size x size, in [0, 1].

    Returns (x_train [n, 1, size, size] float32, y_train [n] int64, x_test, y_test), 80/20 split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the message is the point
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from e
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = len(y) * 4 // 5
    return x[:cut], y[:cut], x[cut:], y[cut:]


def stdlib_text(max_bytes: int = 1 << 20) -> str:
    """Text that ships with Python: the standard library's own source files, in a fixed order."""
    root = Path(os.__file__).parent
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        chunks.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    return "".join(chunks)[:max_bytes]


def encode(text: str) -> tuple[torch.Tensor, int]:
    """Character ids [len(text)] int64 and the vocabulary size."""
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), len(index)


def windows(data: torch.Tensor, batch: int, seq: int, seed: int):
    """Endless batches of random windows: (x [batch, seq], y = x shifted by one character)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=g).tolist()
        yield (torch.stack([data[s:s + seq] for s in starts]),
               torch.stack([data[s + 1:s + seq + 1] for s in starts]))


def next_char_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


@torch.no_grad()
def bits_per_char(model: torch.nn.Module, data: torch.Tensor, seq: int, rows: int, device) -> float:
    """Mean next-character loss over consecutive windows of held-out text, in bits."""
    n = min((len(data) - 1) // seq, rows)
    x = data[:n * seq].view(n, seq).to(device)
    y = data[1:n * seq + 1].view(n, seq).to(device)
    return next_char_loss(model, x, y).item() / math.log(2)


def language_model_parser(doc: str, **defaults) -> argparse.ArgumentParser:
    p = parser(doc, **defaults)
    p.add_argument("--seq", type=int, default=defaults.get("seq", 64), help="characters per window")
    p.add_argument("--text-bytes", type=int, default=400_000, help="how much standard-library text to use")
    return p


def language_model(args, make_model: Callable[[int], torch.nn.Module], title: str, optim: str = "Adam",
                   **optim_kwargs):
    """Trains make_model(vocab) on the standard library's source; reports held-out bits/char."""
    data, vocab = encode(stdlib_text(args.text_bytes))
    cut = len(data) * 9 // 10
    train_data, val_data = data[:cut], data[cut:]
    return compare(args, lambda: make_model(vocab), lambda: windows(train_data, args.batch, args.seq, args.seed),
                   next_char_loss,
                   lambda model: {"val_bpc": bits_per_char(model, val_data, args.seq, 4 * args.batch, args.device)},
                   title, optim, **optim_kwargs)


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int):
    """Endless shuffled (x, y) batches."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i:i + batch]
            yield x[idx], y[idx]


def classify(args, make_model: Callable[[], torch.nn.Module], title: str):
    """Trains a digits classifier with Adam and cross-entropy; reports test accuracy."""
    x_train, y_train, x_test, y_test = digits(seed=args.seed)
    x_test, y_test = x_test.to(args.device), y_test.to(args.device)
    return compare(args, make_model, lambda: batches(x_train, y_train, args.batch, args.seed),
                   lambda model, x, y: torch.nn.functional.cross_entropy(model(x), y),
                   lambda model: {"test_acc": accuracy(model, x_test, y_test)}, title)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
                  for i in range(0, len(y), batch))
    model.train()
    return correct / max(len(y), 1)
