"""fastops.nn.{RNNCell, LSTMCell, GRUCell, RNN, LSTM, GRU}: torch.nn's recurrent modules on fastops.

Each subclasses its torch.nn twin (same constructor, parameters, state_dict keys) and replaces
only `forward`, so fastops.patch() can swap the class in place. The layers run one fastops layer
op per (layer, direction): the input projection of all steps as one GEMM, then the recurrence with
fused steps (fastops/ops/rnn.py). Inputs as torch: (T, B, I), (B, T, I) with batch_first,
unbatched (T, I), or a PackedSequence; hx (layers * directions, B, H), (h0, c0) for LSTM.
Dropout between layers uses torch's dropout (its RNG stream, not cuDNN's). LSTM proj_size > 0 runs
the projected layer op (fastops/ops/rnn_proj.py). Inputs of other dtypes run torch's own forward,
with the reason in fastops.explain().
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fastops import _dispatch, _dropin
from fastops import functional as F
from fastops.ops import rnn as _rnn
from fastops.ops.rnn import FAMILY


# ---- cells ---------------------------------------------------------------------------------------

def _cell_forward(module, name, input, hx, lstm: bool):
    """torch.nn.*Cell.forward's argument handling, then the fastops cell."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None:
        for h in (hx if lstm else (hx,)):
            if h.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {h.dim()}D instead")
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        zeros = torch.zeros(input.size(0), module.hidden_size, dtype=input.dtype, device=input.device)
        hx = (zeros, zeros) if lstm else zeros
    elif not batched:
        hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if lstm else hx.unsqueeze(0)
    return input, hx, batched


class RNNCell(torch.nn.RNNCell):
    """torch.nn.RNNCell on fastops.functional.rnn_tanh_cell / rnn_relu_cell."""

    def forward(self, input, hx=None):
        x, h, batched = _cell_forward(self, "RNNCell", input, hx, False)
        if self.nonlinearity == "tanh":
            out = F.rnn_tanh_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        elif self.nonlinearity == "relu":
            out = F.rnn_relu_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return out if batched else out.squeeze(0)


class LSTMCell(torch.nn.LSTMCell):
    """torch.nn.LSTMCell on fastops.functional.lstm_cell."""

    def forward(self, input, hx=None):
        x, hc, batched = _cell_forward(self, "LSTMCell", input, hx, True)
        h, c = F.lstm_cell(x, hc, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(torch.nn.GRUCell):
    """torch.nn.GRUCell on fastops.functional.gru_cell."""

    def forward(self, input, hx=None):
        x, h, batched = _cell_forward(self, "GRUCell", input, hx, False)
        out = F.gru_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return out if batched else out.squeeze(0)


# ---- layers --------------------------------------------------------------------------------------

class _FastRNNBase:
    """forward() shared by RNN, LSTM and GRU (mixed into the torch classes)."""

    def _why_torch(self, x: torch.Tensor):
        if self.mode not in _rnn.MODES:
            return f"mode {self.mode!r}"
        return None

    def _prepare(self, input, hx):
        """torch's argument handling: (x [T, B, I] time-major, hx tuple in the caller's batch order,
        lengths or None, packed input or None, batched). Raises what torch raises."""
        lstm = self.mode == "LSTM"
        name = self.mode.split("_")[0]  # RNN, LSTM, GRU: torch's message prefix
        D = 2 if self.bidirectional else 1
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            data, batch_sizes, sorted_indices, _ = packed
            x, lengths = pad_packed_sequence(packed)  # time-major, the caller's batch order
            batched = True
            if hx is not None:  # torch checks the sorted hx against the packed data
                self.check_forward_args(data, self.permute_hidden(hx, sorted_indices) if lstm else
                                        (hx if sorted_indices is None else hx.index_select(1, sorted_indices)),
                                        batch_sizes)
        else:
            lengths = None
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            if hx is not None:
                hs = hx if lstm else (hx,)
                want = 3 if batched else 2
                if any(h.dim() != want for h in hs):
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    got = ", ".join(f"{h.dim()}-D" for h in hs)
                    what = "hx and cx" if lstm else "hx"
                    raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got "
                                       f"({got}) tensors" if lstm else
                                       f"For {kind} input, hx should also be {want}-D but got {got} tensor")
                if not batched:
                    hx = tuple(h.unsqueeze(1) for h in hs) if lstm else hx.unsqueeze(1)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch's words
        B = x.shape[1]
        if hx is None:
            zeros = torch.zeros(self.num_layers * D, B, self.hidden_size, dtype=x.dtype, device=x.device)
            hx = zeros
            if lstm:  # h0 [L*D, B, proj_size] when proj_size > 0
                P = getattr(self, "proj_size", 0)
                hx = (torch.zeros(self.num_layers * D, B, P, dtype=x.dtype, device=x.device) if P > 0 else zeros,
                      zeros)
        if packed is None:
            self.check_forward_args(x.transpose(0, 1) if self.batch_first else x, hx, None)
        hx = tuple(hx) if lstm else (hx,)
        return x, hx, lengths, packed, batched

    def forward(self, input, hx=None):
        if type(input) is torch.Tensor and _rnn.torch_by_policy(self, input, hx):
            return super().forward(input, hx)
        probe = input.data if isinstance(input, PackedSequence) else input
        why = self._why_torch(probe)
        if why is not None:
            _dispatch.fallback("rnn_layer", probe, f"{type(self).__name__}: {why}")
            return super().forward(input, hx)
        x, hx, lengths, packed, batched = self._prepare(input, hx)
        mode = _rnn.MODES[self.mode]
        lstm = mode == _rnn.LSTM
        D = 2 if self.bidirectional else 1
        x = x.contiguous()
        proj = getattr(self, "proj_size", 0) > 0
        b_ih, b_hh = getattr(self, "bias_ih_l0", None), getattr(self, "bias_hh_l0", None)
        if proj:
            backend = _rnn._proj.choose(x, hx[0][0], hx[1][0], self.weight_ih_l0, self.weight_hh_l0,
                                        self.weight_hr_l0, b_ih, b_hh, lengths)
        else:
            backend = _rnn.choose(x, hx[0][0], hx[1][0] if lstm else None, self.weight_ih_l0, self.weight_hh_l0,
                                  b_ih, b_hh, lengths, mode, False)
        if backend is None:
            return super().forward(input, None if hx is None else self._torch_hx(hx, input, batched))
        weights = [getattr(self, name) for name in self._flat_weights_names]
        out, h_n, c_n = _rnn.run_stack(x, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                                       self.bidirectional, mode, lengths, backend, proj)
        hidden = (h_n, c_n) if lstm else h_n
        if packed is not None:
            lengths_sorted = lengths if packed.sorted_indices is None else lengths[packed.sorted_indices]
            if packed.sorted_indices is not None:
                out = out.index_select(1, packed.sorted_indices.to(out.device))
            data = pack_padded_sequence(out, lengths_sorted, enforce_sorted=True).data
            return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), hidden
        if not batched:
            out = out.squeeze(1)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, hidden

    def _torch_hx(self, hx, input, batched):
        """hx as the caller gave it (for torch's own forward after a fallback)."""
        if not batched:
            hx = tuple(h.squeeze(1) for h in hx)
        return hx if self.mode == "LSTM" else hx[0]


class RNN(_FastRNNBase, torch.nn.RNN):
    """torch.nn.RNN (tanh or relu) on the fastops layer op."""


class LSTM(_FastRNNBase, torch.nn.LSTM):
    """torch.nn.LSTM on the fastops layer op (proj_size > 0: the projected layer op)."""


class GRU(_FastRNNBase, torch.nn.GRU):
    """torch.nn.GRU on the fastops layer op."""


for _torch_cls, _fast_cls in ((torch.nn.RNNCell, RNNCell), (torch.nn.LSTMCell, LSTMCell),
                              (torch.nn.GRUCell, GRUCell), (torch.nn.RNN, RNN), (torch.nn.LSTM, LSTM),
                              (torch.nn.GRU, GRU)):
    _dropin.register_module(FAMILY, _torch_cls, _fast_cls)
