"""torch is optional: without it fastopt works, and fastopt.torch says what to install."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(code):
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_fastopt_torch_without_torch_raises_an_import_error_that_says_what_to_install():
    # sys.modules["torch"] = None makes "import torch" fail, torch installed or not.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import fastopt.torch\n"
        "except ImportError as error:\n    print(error)\n"
    )
    completed = run(code)
    assert completed.returncode == 0, completed.stderr
    message = completed.stdout
    assert "fastopt.torch needs PyTorch" in message
    assert "pip install 'fastopt[torch]'" in message
    assert "--index-url https://download.pytorch.org/whl/cpu" in message


def test_fastopt_works_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, fastopt\n"
        "w = np.ones(3); fastopt.AdamW(w, lr=0.1).step(np.ones(3)); print(w[0])\n"
    )
    completed = run(code)
    assert completed.returncode == 0, completed.stderr
    assert float(completed.stdout) < 1.0
