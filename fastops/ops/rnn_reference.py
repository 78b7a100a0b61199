"""The RNN family's mode constants and torch reference steps (the torch backend's per-step math,
mirroring csrc/include/fastops/math/rnn.h). Kept free of triton so fastops imports without it."""
from __future__ import annotations

import torch

TANH, RELU, LSTM, GRU = 0, 1, 2, 3
GATES = {TANH: 1, RELU: 1, LSTM: 4, GRU: 3}
SAVED = {TANH: 1, RELU: 1, LSTM: 4, GRU: 4}


# ---- torch references (the torch backend's steps; float32, or float64 for float64 inputs) -----

def _biased(g, bias):
    return g if bias is None else g + bias


def step_forward_ref(mode, gi, gh, b_ih, b_hh, h, c, y_t, saved_t, lengths, t):
    """step_forward in torch ops, same in-place contract; math in saved_t's dtype."""
    acc = saved_t.dtype
    H = h.shape[1]
    gi, gh = _biased(gi.to(acc), b_ih), _biased(gh.to(acc), b_hh)
    h_prev = h.to(acc)
    active = None if lengths is None else (t < lengths.to(h.device)).unsqueeze(1)
    if mode == LSTM:
        i, f, o = (torch.sigmoid(gi[:, k * H:(k + 1) * H] + gh[:, k * H:(k + 1) * H]) for k in (0, 1, 3))
        g = torch.tanh(gi[:, 2 * H:3 * H] + gh[:, 2 * H:3 * H])
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        saved = (i, f, g, o)
        c.copy_(c_new if active is None else torch.where(active, c_new, c))
    elif mode == GRU:
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        gh_n = gh[:, 2 * H:]
        n = torch.tanh(gi[:, 2 * H:] + r * gh_n)
        h_new = (1 - z) * n + z * h_prev
        saved = (r, z, n, gh_n)
    else:
        a = gi + gh
        h_new = torch.relu(a) if mode == RELU else torch.tanh(a)
        saved = (h_new,)
    saved = torch.stack(saved, 1)
    saved_t.copy_(saved if active is None else torch.where(active.unsqueeze(1), saved, 0.0))
    if active is not None:
        h_new = torch.where(active, h_new, h_prev)
        y_t.copy_(torch.where(active, h_new, 0.0))
    else:
        y_t.copy_(h_new)
    h.copy_(h_new)


def step_backward_ref(mode, dy_t, dh, dc, saved_t, c_t, c_prev, h_prev, dgi, dgh, lengths, t):
    """step_backward in torch ops, same in-place contract."""
    H = dh.shape[1]
    active = None if lengths is None else (t < lengths.to(dh.device)).unsqueeze(1)
    dh_in = dh.clone()
    g_h = dh if dy_t is None else dh + dy_t.to(dh.dtype)
    if active is not None:
        g_h = torch.where(active, g_h, 0.0)

    def keep(new, old):
        return new if active is None else torch.where(active, new, old)

    s = saved_t.unbind(1)
    if mode == LSTM:
        i, f, g, o = s
        tc = torch.tanh(c_t)
        dct = (dc if active is None else torch.where(active, dc, 0.0)) + g_h * o * (1 - tc * tc)
        dgi.copy_(torch.cat([dct * g * i * (1 - i), dct * c_prev * f * (1 - f), dct * i * (1 - g * g),
                             g_h * tc * o * (1 - o)], 1))
        dc.copy_(keep(dct * f, dc))
        dh.copy_(keep(torch.zeros_like(dh), dh_in))
    elif mode == GRU:
        r, z, n, gh_n = s
        dn = g_h * (1 - z) * (1 - n * n)
        dr = dn * gh_n * r * (1 - r)
        dz = g_h * (h_prev - n) * z * (1 - z)
        dgi.copy_(torch.cat([dr, dz, dn], 1))
        dgh.copy_(torch.cat([dr, dz, dn * r], 1))
        dh.copy_(keep(g_h * z, dh_in))
    else:
        (h,) = s
        da = torch.where(h > 0, g_h, 0.0) if mode == RELU else g_h * (1 - h * h)
        dgi.copy_(da)
        dh.copy_(keep(torch.zeros_like(dh), dh_in))


# ---- kernel report ------------------------------------------------------------------------
