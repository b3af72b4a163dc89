"""fastopt's benchmarks: the comparison run, the same-bytes ceiling and the report."""
