"""fastopt.schedules.plot and the example that uses it."""

import runpy
import sys
from pathlib import Path

import pytest

import fastopt.schedules as fs

image = pytest.importorskip("matplotlib.image", reason="plotting needs matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plot_schedules.py"


def test_plot_writes_a_png_of_the_requested_size(tmp_path):
    path = tmp_path / "schedules.png"
    schedules = [fs.cosine_annealing(0.1, 200), fs.one_cycle(0.1, 200)]
    returned = fs.plot(
        schedules, 250, path, labels=["cosine", "one cycle"], title="t", figsize=(4, 3), dpi=50
    )
    assert returned == path
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert image.imread(path).shape[:2] == (150, 200)


def test_plot_accepts_a_single_schedule_with_default_label(tmp_path):
    path = fs.plot(fs.step_decay(1.0, 10), 50, tmp_path / "one.png", figsize=(2, 2), dpi=40)
    assert image.imread(path).shape[:2] == (80, 80)


def test_plot_rejects_bad_arguments(tmp_path):
    path = tmp_path / "bad.png"
    with pytest.raises(TypeError, match=r"schedules\[1\] must be a Schedule"):
        fs.plot([fs.constant(1.0), 1.0], 10, path)
    with pytest.raises(ValueError, match="steps"):
        fs.plot(fs.constant(1.0), 0, path)
    with pytest.raises(ValueError, match=r"2 labels for 1 schedule$"):
        fs.plot(fs.constant(1.0), 10, path, labels=["a", "b"])
    assert not path.exists()


def test_plot_explains_a_missing_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        fs.plot(fs.constant(1.0), 10, tmp_path / "none.png")


def test_example_draws_the_common_schedules(tmp_path):
    path = tmp_path / "example.png"
    main = runpy.run_path(str(EXAMPLE))["main"]
    assert main([str(path)]) == str(path)
    assert image.imread(path).shape[:2] == (600, 1100)
