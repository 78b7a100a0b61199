"""fastops as a drop-in: the same small classifier run on torch, under fastops.enable(), and
patched with fastops.patch(), with fastops.explain() showing which kernels ran.

    python examples/softmax_dropin.py [--batch 64] [--classes 1000] [--steps 20]
"""
import argparse
import time

import torch

import fastops


def make_model(features: int, classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, classes), torch.nn.Softmax(dim=-1))


def train(model, x, target, steps):
    """Minimises the negative log of the probability of the target class; returns losses, seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        probs = model(x)
        loss = -probs.gather(1, target[:, None]).clamp_min(1e-12).log().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.features)
    target = torch.randint(0, args.classes, (args.batch,))
    init = make_model(args.features, args.classes).state_dict()

    runs = {}
    for name in ("torch", "fastops.enable()", "fastops.patch()"):
        model = make_model(args.features, args.classes)
        model.load_state_dict(init)
        if name == "fastops.enable()":
            with fastops.enable():
                runs[name] = train(model, x, target, args.steps)
        elif name == "fastops.patch()":
            fastops.patch(model)
            runs[name] = train(model, x, target, args.steps)
        else:
            runs[name] = train(model, x, target, args.steps)

    for name, (losses, seconds) in runs.items():
        print(f"{name:18s} first loss {losses[0]:.4f}  last loss {losses[-1]:.4f}  {seconds * 1e3:.1f} ms")
    print("which kernels ran last:\n" + fastops.explain())


if __name__ == "__main__":
    main()
