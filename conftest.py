"""pytest collects the package's doctests too (``testpaths``); this file adapts that to torch.

``fastopt.torch`` is the optional PyTorch adapter: without torch its module cannot be
imported, so its doctests are reported as skipped, with the reason, instead of failing the
collection of the whole run.
"""

import importlib.util
from pathlib import Path

import pytest

_ADAPTER = Path(__file__).parent / "fastopt" / "torch.py"
_HAVE_TORCH = importlib.util.find_spec("torch") is not None


class _NeedsTorch(pytest.File):
    def collect(self):
        pytest.skip("fastopt.torch needs torch: pip install 'fastopt[torch]'")


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collectors = yield
    if not _HAVE_TORCH and file_path == _ADAPTER:
        return [_NeedsTorch.from_parent(parent, path=file_path)]
    return collectors
