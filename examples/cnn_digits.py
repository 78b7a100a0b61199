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
    _common.classify(args, make_model, "CNN on digits")


if __name__ == "__main__":
    main()
