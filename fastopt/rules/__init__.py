"""One module per update rule: its element-wise body, kernels, functional step and class."""
