"""A character-level LSTM language model trained on text that ships with Python (the standard
library's own source), torch and fastops side by side, reporting bits per character.

    python examples/char_lstm.py [--backend both] [--steps 200] [--batch 32] [--seq 64] [--hidden 256]
"""
import math

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


def encode(text: str):
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.int64), len(chars)


def windows(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
    x = torch.stack([data[s:s + seq] for s in starts.tolist()])
    y = torch.stack([data[s + 1:s + seq + 1] for s in starts.tolist()])
    return x, y


def bits_per_char(model, data, seq, batch, device) -> float:
    """Mean next-character loss over consecutive windows of held-out text, in bits."""
    n = (len(data) - 1) // seq
    x = data[:n * seq].view(n, seq)[:batch * 4].to(device)
    y = data[1:n * seq + 1].view(n, seq)[:batch * 4].to(device)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    return loss.item() / math.log(2)


def main(argv=None):
    p = _common.parser(__doc__, steps=200, batch=32, lr=2e-3)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--text-bytes", type=int, default=400_000)
    args = p.parse_args(argv)
    data, vocab = encode(_common.stdlib_text(args.text_bytes))
    cut = len(data) * 9 // 10
    train_data, val_data = data[:cut], data[cut:]
    torch.manual_seed(args.seed)
    init = CharLSTM(vocab, 64, args.hidden, args.layers).state_dict()

    runs = []
    for backend in _common.backends(args):
        model = CharLSTM(vocab, 64, args.hidden, args.layers).to(args.device)
        model.load_state_dict(init)
        model = _common.prepare(model, backend)
        opt = _common.optimizer("Adam", model.parameters(), backend, lr=args.lr)
        gen = torch.Generator().manual_seed(args.seed)

        def step(_, model=model, opt=opt, gen=gen):
            x, y = (t.to(args.device) for t in windows(train_data, args.batch, args.seq, gen))
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()

        run = _common.train(backend, args.steps, step, args.quiet)
        with _common.running_on(backend):
            run.metrics = {"val_bpc": bits_per_char(model, val_data, args.seq, args.batch, args.device)}
        runs.append(run)
    _common.report(runs, args.plot, "char-LSTM on the Python standard library")


if __name__ == "__main__":
    main()
