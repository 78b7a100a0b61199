"""A 784-128-64-10 MLP with Adam on scikit-learn's handwritten digits (upsampled to 28x28), torch
and fastops side by side: accuracy, loss and time.

    python examples/mlp.py [--backend both] [--steps 300] [--batch 64] [--lr 1e-3] [--plot mlp.png]
"""
import torch

import _common


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def main(argv=None):
    args = _common.parser(__doc__, steps=300, batch=64, lr=1e-3).parse_args(argv)
    x_train, y_train, x_test, y_test = (t.to(args.device) for t in _common.digits(seed=args.seed))
    torch.manual_seed(args.seed)
    init = make_model().state_dict()

    runs = []
    for backend in _common.backends(args):
        model = make_model().to(args.device)
        model.load_state_dict(init)
        model = _common.prepare(model, backend)
        opt = _common.optimizer("Adam", model.parameters(), backend, lr=args.lr)
        order = _common.batches(len(y_train), args.batch, args.seed)

        def step(_, model=model, opt=opt, order=order):
            idx = next(order).to(args.device)
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        run = _common.train(backend, args.steps, step, args.quiet)
        with _common.running_on(backend):
            run.metrics = {"test_acc": _common.accuracy(model, x_test, y_test)}
        runs.append(run)
    _common.report(runs, args.plot, "MLP 784-128-64-10 on digits")


if __name__ == "__main__":
    main()
