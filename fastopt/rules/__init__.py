"""One module per update rule: its declaration (see :mod:`fastopt.rule`), from which its
kernels, its NumPy class and its functional step are derived."""
