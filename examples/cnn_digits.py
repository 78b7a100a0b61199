"""The classic CNN (conv 1->32->64 with 3x3 kernels, max-pool, fc 3136->128->10, Adam lr 1e-3) on
scikit-learn's handwritten digits upsampled to 28x28, torch and fastops side by side: accuracy and
time.

    python examples/cnn_digits.py [--backend both] [--steps 200] [--batch 64] [--plot cnn.png]
"""
import torch
from torch import nn

import _common


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 32 x 14 x 14
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 64 x 7 x 7
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))


def main(argv=None):
    args = _common.parser(__doc__, steps=200, batch=64, lr=1e-3).parse_args(argv)
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
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

        run = _common.train(backend, args.steps, step, args.quiet)
        with _common.running_on(backend):
            run.metrics = {"test_acc": _common.accuracy(model, x_test, y_test)}
        runs.append(run)
    _common.report(runs, args.plot, "CNN on digits")


if __name__ == "__main__":
    main()
