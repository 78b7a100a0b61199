"""Two-rank training on gloo for tests/test_distributed.py (run as a script; spawns its ranks).

    python tests/distributed_worker.py ddp|fsdp OUT.json

Each rank trains a fastops-patched model with fastops.optim.AdamW on its half of every batch;
rank 0 also trains the same model in one process on the whole batch. OUT.json gets whether the
ranks' parameters agree bitwise, the largest differences from the one-process run (first-step
gradients, parameters after the last step), and which fastops kernels ran.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastops  # noqa: E402

STEPS, BATCH, DIM = 4, 8, 32


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 64), torch.nn.ReLU(), torch.nn.Linear(64, DIM))

    def forward(self, x):
        return self.mlp(x + self.attn(x, x, x, need_weights=False)[0])


def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, DIM, generator=g), torch.randn(BATCH, 6, DIM, generator=g)) for _ in range(STEPS)]


def train(model, batches):
    """Trains in place; returns the gradients of the first step."""
    opt = fastops.optim.AdamW(model.parameters(), lr=1e-2)
    first_grads = None
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if first_grads is None:
            first_grads = [full(p.grad).clone() for p in model.parameters()]
        opt.step()
    return first_grads


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def worker(rank, world, mode, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    init = Model().state_dict()
    model = Model()
    model.load_state_dict(init)
    fastops.patch(model)
    half = BATCH // world
    shard = [(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]) for x, y in data()]
    if mode == "ddp":
        dist_model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in (model.attn, model.mlp[0], model.mlp[2]):
            fully_shard(layer)
        dist_model = fully_shard(model)
    grads = train(dist_model, shard)
    params = [full(p.detach()).clone() for p in dist_model.parameters()]
    gathered = [None] * world
    dist.all_gather_object(gathered, params)
    if rank == 0:
        single = Model()
        single.load_state_dict(init)
        fastops.patch(single)
        single_grads = train(single, data())
        result = {
            "max_grad_diff_vs_single": max((a - b).abs().max().item() for a, b in zip(grads, single_grads)),
            "max_grad": max(g.abs().max().item() for g in single_grads),
            "ranks_equal": all(torch.equal(a, b) for a, b in zip(gathered[0], gathered[1])),
            "max_diff_vs_single": max((a - b).abs().max().item() for a, b in zip(params, single.parameters())),
            "kernels": fastops.explain(),
            "patched": isinstance(model.attn, fastops.nn.MultiheadAttention),
        }
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    store = out + ".store"
    if os.path.exists(store):
        os.remove(store)
    mp.spawn(worker, args=(2, mode, store, out), nprocs=2)
