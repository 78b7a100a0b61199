"""A character-level LSTM language model trained on text that ships with Python (the standard
library's own source), torch and fastops side by side, reporting bits per character.

    python examples/char_lstm.py [--backend both] [--steps 200] [--batch 32] [--seq 64] [--hidden 256]
"""
import torch
from torch import nn

import _common


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> logits [B, T, vocab]
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def main(argv=None):
    p = _common.language_model_parser(__doc__, steps=200, batch=32, lr=2e-3, seq=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    args = p.parse_args(argv)
    _common.language_model(args, lambda vocab: CharLSTM(vocab, 64, args.hidden, args.layers),
                           "char-LSTM on the Python standard library")


if __name__ == "__main__":
    main()
