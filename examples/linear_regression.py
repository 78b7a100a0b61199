"""The hello-world: fit y = 3x + 2 with one linear layer (fastops.functional.linear on the fastops
side, torch.nn.functional.linear on the torch side) and SGD or Adam.

    python examples/linear_regression.py [--backend both] [--steps 300] [--optim sgd|adam] [--plot fit.png]
"""
import torch

import _common
import fastops


def main(argv=None):
    p = _common.parser(__doc__, steps=300, batch=256, lr=0.1)
    p.add_argument("--optim", choices=("sgd", "adam"), default="sgd")
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 1, generator=gen, device="cpu").to(args.device) * 2 - 1
    y = 3 * x + 2 + 0.05 * torch.randn(x.shape, generator=gen).to(args.device)

    runs = []
    for backend in _common.backends(args):
        linear = fastops.functional.linear if backend == "fastops" else torch.nn.functional.linear
        w = torch.zeros(1, 1, device=args.device, requires_grad=True)
        b = torch.zeros(1, device=args.device, requires_grad=True)
        if args.optim == "sgd":
            opt = torch.optim.SGD([w, b], lr=args.lr)
        else:
            opt = _common.optimizer("Adam", [w, b], backend, lr=args.lr)

        def step(_, linear=linear, w=w, b=b, opt=opt):
            loss = torch.nn.functional.mse_loss(linear(x, w, b), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        run = _common.train(backend, args.steps, step, args.quiet)
        run.metrics = {"w": w.item(), "b": b.item()}
        runs.append(run)
    _common.report(runs, args.plot, "linear regression y = 3x + 2")


if __name__ == "__main__":
    main()
