"""torch.nn modules running on fastops kernels: same constructors, attributes and state_dict keys.

Each class subclasses its torch.nn twin and only replaces `forward`, so `fastops.patch(model)`
can swap a module's class in place and `fastops.unpatch(model)` can swap it back.
"""
from fastops.nn.softmax import Softmax
from fastops.nn.attention import MultiheadAttention
from fastops.nn.conv import Conv2d
from fastops.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from fastops.nn.matmul import Linear

__all__ = ["Softmax", "MultiheadAttention", "Conv2d", "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "Linear"]

