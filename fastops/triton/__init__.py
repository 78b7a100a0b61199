"""Triton kernels, one module per op family. Importing a module compiles nothing and touches no
device; kernels compile on first launch (or under TRITON_INTERPRET=1 run on CPU tensors)."""
