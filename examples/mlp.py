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
    _common.classify(args, make_model, "MLP 784-128-64-10 on digits")


if __name__ == "__main__":
    main()
