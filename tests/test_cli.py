"""The ``fastopt`` command end to end, on tiny sizes: bench, report, info, ``python -m``."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from fastopt.bench.report import TIMES, legend
from fastopt.bench.results import load
from fastopt.bench.torch_child import INSTALL_COMMANDS, install_hint, torch_installed
from fastopt.cli import main

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every pipe table of ``text``, keyed by the line of text above it (images skipped)."""
    tables, title, lines = {}, None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            headers = [cell.strip() for cell in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [cell.strip() for cell in lines[i].strip("|").split("|")]
                assert len(cells) == len(headers), lines[i]
                rows.append(dict(zip(headers, cells, strict=True)))
                i += 1
            tables[title] = rows
            continue
        if line.strip() and not line.startswith("!["):
            title = line.strip().lstrip("#").strip()
        i += 1
    return tables


_FIGURE = re.compile(
    r"(?P<marks>[~!]*)(?P<value>[\d.]+)\s*(?:ns|µs|ms|s|%|\N{MULTIPLICATION SIGN})?"
    r"(?: \((?P<spread><?[\d.]+)%\))?"
)


def _number(cell: str) -> float:
    match = _FIGURE.fullmatch(cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group("value"))


def _spread(cell: str) -> str | None:
    """The spread in parentheses after a figure (``"2.1"``), or None."""
    match = _FIGURE.fullmatch(cell)
    assert match, f"not a number: {cell!r}"
    return match.group("spread")


def test_bench_quick_prints_parsable_tables_and_saves_json(tmp_path, capsys):
    saved = tmp_path / "run.json"
    implementations = ["fastopt", "ceiling", "numpy"]
    if torch_installed():
        implementations += ["torch-fused", "torch-foreach"]
    threads_before = numba.get_num_threads()
    status = main(
        [
            "bench",
            "--quick",
            "--quiet",
            "--rules",
            "sgd",
            "adam",
            "--sizes",
            "64",
            "1000",
            "--implementations",
            *implementations,
            "--threads",
            "1",
            "--json",
            str(saved),
        ]
    )
    assert status == 0
    assert numba.get_num_threads() == threads_before  # --threads does not leak
    out = capsys.readouterr().out
    tables = _tables(out)
    rules = tables["fastopt, float32"]
    assert [(r["rule"], r["size"]) for r in rules] == [
        ("SGD", "2^6"),
        ("SGD", "1000"),
        ("Adam", "2^6"),
        ("Adam", "1000"),
    ]
    for row in rules:
        for column in ("time/step", "Melt/s", "GB/s", "% of ceiling", f"{TIMES} NumPy"):
            assert _number(row[column]) > 0, column
        # every timed figure carries its spread over the repeats; the throughputs share time's
        for column in ("time/step", "% of ceiling", f"{TIMES} NumPy"):
            assert _spread(row[column]) is not None, column
        assert _spread(row["Melt/s"]) is None and _spread(row["GB/s"]) is None
        if torch_installed():
            assert _number(row[f"{TIMES} torch fused"]) > 0
    # the units and marks are explained once, after the tables
    assert out.count("How to read the tables:") == 1
    assert out.count("Melt/s: million elements updated per second") == 1
    assert out.index("How to read the tables:") > out.index("Per-call time")
    for line in legend():
        assert line.split(":")[0] in out
    many = {
        r["implementation"]: r for r in tables["Adam on 200 arrays, 2^20 elements in all, float32"]
    }
    assert many["fastopt"]["launches"] == "200"
    assert _number(many["fastopt"]["time/step"]) > 0
    assert many["fastopt flat buffer"]["time/step"].startswith(("pending", "error")) or (
        _number(many["fastopt flat buffer"]["time/step"]) > 0
    )
    overhead = next(rows for title, rows in tables.items() if title.startswith("Per-call"))
    assert overhead[0]["call"] == "`opt.step(grad)`"
    assert _number(overhead[0]["median"]) > 0

    results = load(saved)
    assert results.data["config"]["threads"] == 1
    assert {r["implementation"] for r in results.rows} >= set(implementations)
    assert all(r["status"] == "ok" for r in results.rows if r["case"] == "single")
    assert results.data["overhead"]["step"]["median_ns"] > 0
    assert results.data["bandwidth"]["gb_per_s"] > 0
    if torch_installed():
        assert results.data["torch"]["isolation"].startswith("separate process")

    out_dir = tmp_path / "from-json"
    assert main(["report", "--from-json", str(saved), "--out", str(out_dir), "--quiet"]) == 0
    assert json.loads((out_dir / "results.json").read_text())["rows"] == results.rows


def test_report_quick_writes_markdown_html_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "report"
    status = main(
        [
            "report",
            "--quick",
            "--quiet",
            "--rules",
            "adam",
            "rmsprop",
            "--sizes",
            "256",
            "4096",
            "--no-torch",
            "--no-many-tensors",
            "--no-compile-time",
            "--out",
            str(out_dir),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    summary = next(
        rows for title, rows in _tables(printed).items() if title.startswith("2^12 float32")
    )
    assert [row["rule"] for row in summary] == ["RMSprop", "Adam"]
    for name in ("throughput_float32.png", "speedup_float32.png", "convergence.png"):
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    markdown = (out_dir / "report.md").read_text()
    tables = _tables(markdown)
    assert "Speed targets" in markdown and "Machine" in markdown
    assert markdown.count("### Reading the tables") == 1
    assert all(f"- {line}" in markdown for line in legend())
    assert all(_spread(row["time/step"]) for row in tables["fastopt, float32"])
    assert [r["rule"] for r in tables["fastopt, float32"]] == ["RMSprop"] * 2 + ["Adam"] * 2
    assert "![throughput per rule against size, with the roofline](throughput_float32.png)" in (
        markdown
    )
    assert len(tables["Convergence on the seed problems"]) == 6
    page = (out_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<table>" in page


def test_bench_without_torch_says_how_to_add_it(monkeypatch, capsys):
    # A None entry makes `import torch` fail and find_spec report no torch.
    monkeypatch.setitem(sys.modules, "torch", None)
    assert not torch_installed()
    status = main(
        [
            "bench",
            "--quick",
            "--quiet",
            "--rules",
            "sgd",
            "--sizes",
            "64",
            "--no-many-tensors",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(", torch not installed")
    assert lines[1] == f"To add the torch.optim comparison: {install_hint()}"
    assert all(command in lines[1] for command in INSTALL_COMMANDS)
    assert not any("torch fused" in line for line in lines if line.startswith("|"))


def test_bench_with_no_torch_gives_no_install_hint(capsys):
    args = ["bench", "--quick", "--quiet", "--rules", "sgd", "--sizes", "64"]
    assert main([*args, "--no-many-tensors", "--threads", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("torch not measured (--no-torch was given)")
    assert "To add the torch.optim comparison" not in out


def test_bench_runs_the_declared_rules(capsys):
    args = ["bench", "--quick", "--quiet", "--rules", "adamax", "nadam", "nadam_decoupled"]
    assert main([*args, "--sizes", "64", "--no-many-tensors", "--threads", "1", "--no-torch"]) == 0
    rows = _tables(capsys.readouterr().out)["fastopt, float32"]
    assert [row["rule"] for row in rows] == ["Adamax", "NAdam", "NAdamW"]
    for row in rows:
        for column in ("time/step", "GB/s", "% of ceiling", f"{TIMES} NumPy"):
            assert _number(row[column]) > 0, column


def test_install_hint_names_an_extra_that_exists():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert INSTALL_COMMANDS[0] == 'pip install "fastopt[torch]"'
    assert any(r.startswith("torch") for r in project["optional-dependencies"]["torch"])
    # the Quick start (`pip install . && fastopt bench --quick`) draws tqdm's progress bar
    assert any(r.startswith("tqdm") for r in project["dependencies"])


@pytest.mark.slow
def test_compile_times_from_fresh_processes():
    from fastopt.bench.compiletime import measure_compile_times

    times = measure_compile_times(["sgd"])
    cold, warm = times["rules"]["sgd"]["cold"], times["rules"]["sgd"]["warm"]
    for key in (
        "import_numba_s",
        "import_fastopt_s",
        "first_step_serial_s",
        "first_step_parallel_s",
        "import_and_first_step_s",
        "process_wall_s",
    ):
        assert cold[key] > 0 and warm[key] > 0, key
    # compiling is slower than loading from the cache
    assert cold["first_step_parallel_s"] > warm["first_step_parallel_s"]
    assert times["numba_baseline"]["warm"]["first_call_s"] > 0


def test_info_text_and_json(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for key in ("CPU", "versions", "numba threads", "SIMD (LLVM)", "CUDA"):
        assert re.search(rf"^{re.escape(key)}\s+\S", text, re.MULTILINE), key
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["threading_layer"] in ("tbb", "omp", "workqueue")
    assert info["versions"]["numba"]
    assert isinstance(info["cuda"]["available"], bool)
    assert isinstance(info["simd"]["llvm_features"], list)


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads must be between 1 and" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "2^x"])
    assert "size must look like" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--rules", "no-such-rule"])
    assert "invalid choice" in capsys.readouterr().err


def test_report_from_a_file_that_is_not_a_run(tmp_path, capsys):
    bogus = tmp_path / "x.json"
    bogus.write_text("[]")
    assert main(["report", "--from-json", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "not a fastopt benchmark run" in capsys.readouterr().err


def test_python_m_fastopt():
    completed = subprocess.run(
        [sys.executable, "-m", "fastopt", "info", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["versions"]["fastopt"]
    help_text = subprocess.run(
        [sys.executable, "-m", "fastopt", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_text.returncode == 0
    assert all(command in help_text.stdout for command in ("bench", "report", "info"))
