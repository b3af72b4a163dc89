import sys
from pathlib import Path

# The scripts the tests run in other processes (under mpiexec, torchrun, other thread counts)
# hold no tests; --doctest-modules would import them here (torch_zero_worker needs torch).
collect_ignore_glob = ["*_worker.py"]

# The checkout under test comes first, whatever else is installed; then the test helpers.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
