"""The benchmark's building blocks: cases, ceiling kernel, timing, tables, seed problems."""

import inspect
import io
import itertools
import math
import re

import numpy as np
import pytest
from tqdm import tqdm

import fastopt
import fastopt._launch as launch_module
from fastopt.bench import torch_child
from fastopt.bench.cases import (
    RULES,
    declared_case,
    many_tensor_sizes,
    parse_size,
    size_label,
)
from fastopt.bench.ceiling import MAX_STATE, stream_step
from fastopt.bench.document import Document, markdown_table
from fastopt.bench.progress import Progress
from fastopt.bench.report import (
    CEILING_MARK,
    NOISY_MARK,
    TIMES,
    format_number,
    format_percent,
    format_ratio,
    format_spread,
    format_time,
    legend,
    many_tensors_table,
    rule_table,
    summary_table,
    targets_table,
    times_table,
    with_spread,
)
from fastopt.bench.results import (
    NOISY_SPREAD,
    SCHEMA,
    Results,
    combined_spread,
    load,
    save,
    spread,
)
from fastopt.bench.runner import TimingPolicy, per_call_times, summarize, time_call
from fastopt.bench.seed import seed_runs
from fastopt.bench.suite import make_step, many_tensors_step


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("2^20", 1 << 20), ("2**12", 4096), ("16M", 16 << 20), ("3k", 3072)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "0", "2^", "-5", "1.5", "1T", "two"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_size_label():
    assert size_label(1 << 24) == "2^24"
    assert size_label(1000) == "1000"


def _state_count(case):
    """State arrays the class actually creates (an independent count of the traffic)."""
    param = np.zeros(case.shape(6), np.float32)
    opt = case.make(param)
    opt.step(np.ones(param.shape, np.float32))
    # Shaped like the parameter: Adafactor's row and column factors are not traffic.
    return sum(getattr(v, "shape", None) == param.shape for v in opt.state[0].values())


@pytest.mark.parametrize("name", list(RULES))
def test_bytes_per_element_counts_every_array_read_and_written(name):
    case = RULES[name]
    n_state = _state_count(case)
    assert case.n_state == n_state
    # read param, grad, state (and what the read passes of a rule with norms or a matrix
    # step read); write param, state; a matrix step's direction is written and read back
    reads = 2 + n_state + case.read_pass + case.scratch
    assert case.bytes_per_element("float32") == 4 * (reads + 1 + n_state + case.scratch)
    assert case.scratch == (case.optimizer._rule.matrix is not None)
    assert case.bytes_per_element("float64") == 2 * case.bytes_per_element("float32")


def test_bytes_per_element_of_the_headline_rules():
    per_element = {name: RULES[name].bytes_per_element(np.float32) for name in RULES}
    assert per_element["adam"] == 28
    assert per_element["sgd_momentum"] == per_element["adagrad"] == per_element["rmsprop"] == 20
    assert per_element["sgd"] == 12
    assert per_element["amsgrad"] == 36
    assert per_element["adamax"] == per_element["nadam"] == per_element["nadam_decoupled"] == 28
    # The read pass: LAMB reads the parameter, gradient and both moments again, LARS the
    # parameter and gradient (its momentum buffer is not in its norms).
    assert (per_element["lamb"], per_element["lars"]) == (28 + 16, 20 + 8)
    # A matrix step: its direction pass reads (Muon: the gradient and the momentum, Adafactor:
    # the gradient) and writes the direction, which the update reads; Adafactor's norms
    # read the parameter, the gradient and the direction.
    assert (per_element["muon"], per_element["adafactor"]) == (20 + 8 + 8, 12 + 4 + 8 + 12)


@pytest.mark.parametrize("name", list(RULES))
def test_numpy_baseline_runs_the_same_update_as_fastopt(name):
    case = RULES[name]
    rng = np.random.default_rng(1)
    start = rng.standard_normal(case.shape(300))
    grads = [rng.standard_normal(start.shape) for _ in range(4)]
    ours, theirs = start.copy(), start.copy()
    opt = case.make(ours)
    state = case.new_state(theirs)
    for step, grad in enumerate(grads, start=1):
        opt.step(grad)
        case.reference_step(theirs, grad, *state, step=step)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    assert not np.array_equal(ours, start)


DECLARED = [name for name, case in RULES.items() if hasattr(case.optimizer, "_rule")]

#: The state arrays and options of every case; results.json and the saved reports name them.
CASES = {
    "sgd": ((), {"lr": 1e-3}),
    "sgd_momentum": (("momentum_buffer",), {"lr": 1e-3, "momentum": 0.9}),
    "adagrad": (("sum",), {"lr": 1e-2}),
    "rmsprop": (("square_avg",), {"lr": 1e-2}),
    "rmsprop_centered": (("square_avg", "grad_avg"), {"lr": 1e-2, "centered": True}),
    "adam": (("exp_avg", "exp_avg_sq"), {"lr": 1e-3}),
    "adamw": (("exp_avg", "exp_avg_sq"), {"lr": 1e-3, "weight_decay": 1e-2}),
    "amsgrad": (("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), {"lr": 1e-3, "amsgrad": True}),
    "adamax": (("exp_avg", "exp_inf"), {"lr": 2e-3}),
    "nadam": (("exp_avg", "exp_avg_sq"), {"lr": 2e-3}),
    "nadam_decoupled": (
        ("exp_avg", "exp_avg_sq"),
        {"lr": 2e-3, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    ),
    "lion": (("exp_avg",), {"lr": 1e-4}),
    "ademamix": (("exp_avg", "exp_avg_sq", "exp_avg_slow"), {"lr": 1e-3}),
    "adan": (("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"), {"lr": 1e-3}),
    "lamb": (("exp_avg", "exp_avg_sq"), {"lr": 1e-3}),
    "lars": (("momentum_buffer",), {"lr": 1e-3}),
    "schedule_free_sgd": (("z",), {"lr": 1.0}),
    "schedule_free_adamw": (("z", "exp_avg_sq"), {"lr": 2.5e-3}),
    "adadelta": (("square_avg", "acc_delta"), {"lr": 1.0}),
    "radam": (("exp_avg", "exp_avg_sq"), {"lr": 1e-3}),
    "rprop": (("prev", "step_size"), {"lr": 1e-2}),
    "asgd": (("ax",), {"lr": 1e-2}),
    "adafactor": ((), {"lr": 1e-2}),
    "muon": (("momentum_buffer",), {"lr": 1e-3}),
}


def test_every_case_keeps_its_name_state_and_options():
    assert {name: (case.state, case.options) for name, case in RULES.items()} == CASES
    assert all(case.torch_options == case.options for case in RULES.values())


def test_adamax_and_nadam_cases_are_derived_from_their_declarations():
    assert {"adamax", "nadam", "nadam_decoupled"} <= set(DECLARED)
    decoupled = RULES["nadam_decoupled"]
    assert (decoupled.optimizer, decoupled.label, decoupled.torch_class) == (
        fastopt.NAdam,
        "NAdamW",
        "NAdam",
    )
    assert RULES["adamax"].torch_class == "Adamax" and RULES["nadam"].torch_class == "NAdam"
    assert RULES["nadam"].initial == (0.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", DECLARED)
def test_a_declared_class_derives_a_reference_equal_to_its_step(name, dtype):
    """Also for a hand-written case once its class is declared: the derived case can replace
    it under the same name and options."""
    case = RULES[name]
    derived = declared_case(
        case.optimizer, case.options, name=name, label=case.label, torch_class=case.torch_class
    )
    assert (derived.state, derived.options, derived.torch_options) == (
        case.state,
        case.options,
        case.torch_options,
    )
    rng = np.random.default_rng(2)
    ours = rng.standard_normal(case.shape(257)).astype(dtype)
    theirs = ours.copy()
    opt = case.make(ours)
    state = derived.new_state(theirs)
    for step in range(1, 7):
        grad = rng.standard_normal(ours.shape).astype(dtype)
        opt.step(grad)
        derived.reference_step(theirs, grad, *state, step=step)
        rtol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol, err_msg=f"step {step}")
        kept = [e.name for e in derived.host_state if e.shape(ours.shape) is not None]
        assert len(state) == len(derived.state) + len(kept)
        for key, array in zip([*derived.state, *kept], state, strict=True):
            np.testing.assert_allclose(opt.state[0][key], array, rtol=rtol, atol=rtol)


def test_a_declared_reference_keeps_host_scalars_for_every_array_and_run():
    """NAdam's mu_product: two arrays stepped in turn, a new run, a run resumed mid-way."""
    case = RULES["nadam"]
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(50) for _ in range(2)]
    grads = [[rng.standard_normal(50) for _ in params] for _ in range(5)]
    ours = [p.copy() for p in params]
    opt = case.make(ours)
    theirs = [p.copy() for p in params]
    states = [case.new_state(p) for p in theirs]
    for step, grad in enumerate(grads, start=1):
        opt.step(grad)
        for param, g, state in zip(theirs, grad, states, strict=True):
            case.reference_step(param, g, *state, step=step)
    for mine, reference_param in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, reference_param, rtol=1e-12)
    # A new run from step 1 starts from the initial mu_product again.
    again = params[0].copy()
    state = case.new_state(again)
    for step, grad in enumerate(grads, start=1):
        case.reference_step(again, grad[0], *state, step=step)
    np.testing.assert_array_equal(again, theirs[0])
    # A run resumed at step 4 (state copied from a run stopped after 3) ends the same.
    fresh = declared_case(fastopt.NAdam, case.options)
    resumed = params[1].copy()
    state = fresh.new_state(resumed)
    for step, grad in enumerate(grads[:3], start=1):
        case.reference_step(resumed, grad[1], *state, step=step)
    for step, grad in enumerate(grads[3:], start=4):
        fresh.reference_step(resumed, grad[1], *state, step=step)
    np.testing.assert_array_equal(resumed, theirs[1])
    assert opt.state[1]["mu_product"] == pytest.approx(
        np.prod([0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3)) for t in range(1, 6)]), rel=1e-6
    )


def test_declared_case_defaults_and_refusals():
    case = declared_case(fastopt.Adamax)
    assert (case.name, case.label, case.options, case.torch_class) == (
        "adamax",
        "Adamax",
        {},
        "Adamax",
    )
    assert case.new_state(np.ones(3, np.float32))[0].dtype == np.float32
    with pytest.raises(TypeError, match="not declared"):
        declared_case(fastopt.Optimizer)
    with pytest.raises(ValueError, match="Adamax has no hyperparameter momentum"):
        declared_case(fastopt.Adamax, {"momentum": 0.9})
    with pytest.raises(ValueError):
        declared_case(fastopt.NAdam, {"lr": -1.0})
    with pytest.raises(TypeError, match="takes 2 state arrays"):
        case.reference_step(np.zeros(2), np.zeros(2), np.zeros(2), step=1)


@pytest.mark.parametrize("name", DECLARED)
def test_declared_torch_options_build_the_torch_class_and_run_the_same_update(name):
    """torch.optim's class, or a reference package's for a rule torch lacks (skipped where
    the package is not installed)."""
    torch = pytest.importorskip("torch")
    case = RULES[name]
    try:
        twin_class = torch_child.twin_class(case.torch_class)
    except ValueError as error:
        pytest.skip(str(error))
    rng = np.random.default_rng(4)
    start = rng.standard_normal((8, 8))  # a matrix: LARS's and LAMB's trust ratios apply
    ours = start.copy()
    opt = case.make(ours)
    param = torch.tensor(start, requires_grad=True)
    flags = {"foreach": True} if "foreach" in inspect.signature(twin_class).parameters else {}
    twin = twin_class([param], **case.torch_options, **flags)
    if hasattr(twin, "train"):
        twin.train()
    for _ in range(5):
        grad = rng.standard_normal((8, 8))
        opt.step(grad)
        param.grad = torch.tensor(grad)
        twin.step()
    # torch's Muon iterates Newton-Schulz in bfloat16: each update of size lr agrees to
    # about 2^-8 of it (tests/test_muon.py checks float32 iterations to rounding).
    atol = 5 * case.options["lr"] * 2**-6 if name == "muon" else 1e-9
    np.testing.assert_allclose(ours, param.detach().numpy(), rtol=1e-6, atol=atol)


def test_torch_twin_without_a_fused_kernel_still_runs_foreach():
    if not torch_child.torch_installed():
        pytest.skip("torch is not installed")
    requests = [
        {"case": "single", "rule": rule, "dtype": "float32", "size": 64, "implementation": impl}
        for rule in ("adamax", "nadam_decoupled")
        for impl in ("torch-fused", "torch-foreach")
    ]
    policy = TimingPolicy(warmup=1, repeats=2, min_repeats=1, sample_seconds=0.0)
    results, info = torch_child.run(requests, 1, policy, 0, Progress(enabled=False))
    assert info["available"] is True
    fused = results[0::2]
    assert [r["status"] for r in fused] == ["unavailable", "unavailable"]
    assert fused[0]["note"] == "TypeError: torch.optim.Adamax has no fused implementation"
    assert all(r["status"] == "ok" and r["median_ns"] > 0 for r in results[1::2])


def test_many_tensor_sizes_look_like_a_model():
    sizes = many_tensor_sizes()
    assert len(sizes) == 200
    assert sum(sizes) == 1 << 20
    assert min(sizes) >= 1
    assert sizes == many_tensor_sizes()
    assert max(sizes) > 100 * min(sizes)
    with pytest.raises(ValueError, match="count"):
        many_tensor_sizes(count=3)
    with pytest.raises(ValueError, match="total"):
        many_tensor_sizes(total=10)


@pytest.mark.parametrize("n_state", range(MAX_STATE + 1))
def test_stream_step_reads_and_writes_exactly_the_rule_arrays(n_state):
    rng = np.random.default_rng(n_state)
    param, grad = rng.standard_normal(1001), rng.standard_normal(1001)
    state = [rng.standard_normal(1001) for _ in range(n_state)]
    before = [a.copy() for a in (param, grad, *state)]
    stream_step(param, grad, *state)
    np.testing.assert_array_equal(grad, before[1])
    for after, start in zip((param, *state), (before[0], *before[2:]), strict=True):
        np.testing.assert_array_equal(after, start + before[1])


def test_stream_step_parallel_path_matches(monkeypatch):
    monkeypatch.setattr(launch_module, "PARALLEL_THRESHOLD", 64)
    param, grad = np.zeros(10_007, np.float32), np.arange(10_007, dtype=np.float32)
    m, v = np.ones_like(param), np.full_like(param, 2.0)
    stream_step(param, grad, m, v)
    np.testing.assert_array_equal(param, grad)
    np.testing.assert_array_equal(m, 1 + grad)
    np.testing.assert_array_equal(v, 2 + grad)


def test_stream_step_rejects_too_many_arrays():
    a = np.zeros(4)
    with pytest.raises(ValueError, match=f"at most {MAX_STATE}"):
        stream_step(a, a.copy(), *(a.copy() for _ in range(MAX_STATE + 1)))


def test_time_call_warms_up_and_reports_per_call_times():
    calls = itertools.count()
    policy = TimingPolicy(warmup=3, repeats=4, min_repeats=2, sample_seconds=0.001, max_seconds=1.0)
    timing = time_call(lambda: next(calls), policy)
    assert timing.samples == 4
    assert timing.calls_per_sample >= 1
    assert 0 < timing.min_ns <= timing.q1_ns <= timing.median_ns <= timing.q3_ns <= timing.max_ns
    assert set(timing.as_dict()) >= {"q1_ns", "q3_ns", "max_ns"}  # saved with each row
    # warm-up, calibration (itself a sample when a batch is one call), then the samples
    batches = timing.samples - (timing.calls_per_sample == 1)
    assert next(calls) == 3 + 1 + batches * timing.calls_per_sample


def test_time_call_stops_at_its_budget():
    timing = time_call(
        lambda: sum(range(20_000)),
        TimingPolicy(warmup=0, repeats=1000, min_repeats=2, sample_seconds=0.0, max_seconds=0.0),
    )
    assert timing.samples == 2


def test_per_call_times():
    times = per_call_times(lambda: None, 50, warmup=5)
    assert len(times) == 50 and all(t >= 0 for t in times)


def test_summarize_computes_the_spread_from_known_timings():
    samples = [14.0, 10.0, 12.0, 11.0, 13.0, 30.0, 9.0]
    timing = summarize(samples, calls_per_sample=8)
    assert (timing.min_ns, timing.median_ns, timing.max_ns) == (9.0, 12.0, 30.0)
    # quartiles by linear interpolation, as NumPy's default percentile
    assert (timing.q1_ns, timing.q3_ns) == (10.5, 13.5)
    np.testing.assert_allclose([timing.q1_ns, timing.q3_ns], np.percentile(samples, [25, 75]))
    assert timing.spread == pytest.approx(3.0 / 12.0)  # one outlier (30) does not move it
    assert (timing.samples, timing.calls_per_sample) == (7, 8)
    assert summarize([5.0, 5.0, 5.0], 1).spread == 0.0
    single = summarize([7.0], 1)
    assert single.q1_ns == single.q3_ns == 7.0 and single.spread is None
    # the saved row gives the same spread
    row = {"status": "ok", **timing.as_dict()}
    assert spread(row) == pytest.approx(0.25)
    assert spread({**row, "status": "unavailable"}) is None
    old = {k: v for k, v in row.items() if k not in ("q1_ns", "q3_ns", "max_ns")}
    assert spread(old) is None  # a run saved before the quartiles were recorded


def test_a_ratio_combines_the_spreads_of_its_two_times():
    assert combined_spread(0.03, 0.04) == pytest.approx(0.05)
    assert combined_spread(0.03, None) is None
    n = 1 << 20
    unknown = _row("adam", n, "numpy", 500.0)
    del unknown["q1_ns"], unknown["q3_ns"]
    results = _results(
        [
            _row("adam", n, "fastopt", 100.0, spread=0.03),
            _row("adam", n, "ceiling", 90.0, spread=0.04),
            unknown,
        ]
    )
    assert results.time_spread("single", "adam", "float32", n, "fastopt") == pytest.approx(0.03)
    assert results.ceiling_spread("adam", "float32", n) == pytest.approx(0.05)
    assert results.speedup_spread("single", "adam", "float32", n, "numpy") is None
    assert results.speedup_spread("single", "adam", "float32", n, "fastopt") == 0.0
    assert results.speedup_spread("single", "adam", "float32", n, "torch-fused") is None


def test_format_spread_and_with_spread():
    assert format_spread(0.0) == "0%"
    assert format_spread(0.0004) == "<0.1%"
    assert format_spread(0.021) == "2.1%"
    assert format_spread(0.0996) == "10%"
    assert format_spread(1.5) == "150%"
    assert with_spread("12.3 µs", 0.021) == "12.3 µs (2.1%)"
    assert with_spread("12.3 µs", NOISY_SPREAD) == "12.3 µs (10%)"  # at the threshold: kept
    assert with_spread("12.3 µs", 0.11) == f"{NOISY_MARK}12.3 µs (11%)"
    assert with_spread("104%", 0.2, above_ceiling=True) == f"{CEILING_MARK}{NOISY_MARK}104% (20%)"
    assert with_spread("n/a", 0.5) == "n/a"
    assert with_spread(f"1.00{TIMES}", None) == f"1.00{TIMES}"


def test_noisy_figures_are_marked_and_counted_under_the_table():
    n = 1 << 20
    rows = [
        _row("adam", n, "fastopt", 100.0, spread=0.02),
        _row("adam", n, "ceiling", 97.0, spread=0.02),
        _row("adam", n, "numpy", 500.0, spread=0.30),
    ]
    table = rule_table(_results(rows), "float32")
    (row,) = table.rows
    cells = dict(zip(table.headers, row, strict=True))
    assert cells["time/step"] == "100 ns (2.0%)"
    assert cells["% of ceiling"] == "97.0% (2.8%)"
    assert cells[f"{TIMES} NumPy"] == f"{NOISY_MARK}5.00{TIMES} (30%)"
    assert cells["Melt/s"] == "10500000"  # no spread of its own: it shares time/step's
    (note,) = table.notes
    assert note.startswith(f"`{NOISY_MARK}` 1 of 3 figures: spread above 10%")
    assert "too noisy" in note
    # the mark keeps the figure a number: right-aligned in Markdown, class "num" in HTML
    assert markdown_table(table.headers, table.rows).splitlines()[1].endswith("-: |")
    times = times_table(_results(rows), "float32")
    assert times.rows[0][-1] == f"{NOISY_MARK}500 ns (30%)"
    assert times.notes[0].startswith(f"`{NOISY_MARK}` 1 of 3 figures")


def test_above_the_ceiling_is_marked_as_noise():
    n = 1 << 24
    rows = [
        _row("sgd", n, "fastopt", 100.0, spread=0.01),
        _row("sgd", n, "ceiling", 104.0, spread=0.01),
        _row("adam", n, "fastopt", 100.0, spread=0.01),
        _row("adam", n, "ceiling", 100.04, spread=0.01),  # shown as 100%: not above
    ]
    results = _results(rows)
    table = rule_table(results, "float32")
    ceiling = [dict(zip(table.headers, r, strict=True))["% of ceiling"] for r in table.rows]
    assert ceiling == [f"{CEILING_MARK}104% (1.4%)", "100% (1.4%)"]
    (note,) = table.notes
    assert note.startswith(f"`{CEILING_MARK}` 1 above 100% of the ceiling")
    assert "noise" in note
    summary = summary_table(results)
    assert summary.rows[0][4] == f"{CEILING_MARK}104% (1.4%)" and summary.notes == table.notes
    targets = targets_table(results)
    measured = {(target, case): m for target, case, m, _ in targets.rows}
    assert measured[("≥ 95% of the same-bytes ceiling", "SGD, n = 2^24")].startswith("!104%")


def test_runs_saved_without_quartiles_show_figures_without_spreads():
    rows = [_row("adam", 1 << 20, impl, ns) for impl, ns in (("fastopt", 100.0), ("ceiling", 50.0))]
    for row in rows:
        del row["q1_ns"], row["q3_ns"]
    table = rule_table(_results(rows), "float32")
    assert table.rows[0][2:6] == ("100 ns", "10500000", "294000", "50.0%")
    assert table.notes == ()


def test_legend_explains_units_spread_and_marks_once():
    lines = legend()
    text = "\n".join(lines)
    for term in ("Melt/s", "GB/s", "% of ceiling", "(n%)", "interquartile range"):
        assert text.count(f"{term}") >= 1, term
    assert sum(line.startswith("Melt/s:") for line in lines) == 1
    assert sum(line.startswith("% of ceiling:") for line in lines) == 1
    assert f"`{NOISY_MARK}`" in text and f"`{CEILING_MARK}`" in text


def test_many_tensors_table_gives_spreads():
    size = 1 << 20
    rows = [
        _row("adam", size, "fastopt", 200.0, case="many_tensors", spread=0.02),
        _row("adam", size, "torch-fused", 400.0, case="many_tensors", spread=0.2),
    ]
    table = many_tensors_table(_results(rows))
    cells = {row[0]: row for row in table.rows}
    assert cells["fastopt"][2] == "200 ns (2.0%)"
    assert cells["fastopt"][4] == f"{NOISY_MARK}2.00{TIMES} (20%)"
    assert cells["torch fused"][4] == f"1.00{TIMES} (0%)"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_tqdm_bar_with_the_time_left_on_a_terminal():
    stream = _Terminal()
    progress = Progress(stream=stream)
    progress.reset(3)
    assert isinstance(progress._bar, tqdm)
    progress.advance("adam float32 n=4096")
    assert progress._bar.n == 0  # a case counts once it has finished
    progress.advance("sgd float32 n=4096", 2)
    assert progress._bar.n == 1 and progress.done == 1
    text = stream.getvalue()
    assert "adam float32 n=4096" in text and "sgd float32 n=4096" in text
    assert "1/3" in text and "case" in text
    assert re.search(r"\[\d\d:\d\d<(\d\d:\d\d|\?)", text)  # elapsed<remaining
    progress.close()
    assert progress.done == 3 and progress._bar is None


def test_progress_is_silent_off_a_terminal_and_when_disabled():
    piped = io.StringIO()  # a file or a pipe: isatty() is False
    progress = Progress(stream=piped)
    progress.reset(2)
    assert progress._bar is not None and progress._bar.disable
    progress.advance("first")
    progress.advance("second")
    progress.close()
    assert piped.getvalue() == "" and progress.done == 2
    silent = _Terminal()
    quiet = Progress(enabled=False, stream=silent)
    quiet.reset(1)
    quiet.advance("x")
    quiet.close()
    assert silent.getvalue() == "" and quiet._bar is None


def test_torch_missing_gives_unavailable_rows(monkeypatch):
    monkeypatch.setattr(torch_child, "torch_installed", lambda: False)
    requests = [
        {
            "case": "single",
            "rule": "adam",
            "dtype": "float32",
            "size": 8,
            "implementation": "torch-fused",
        }
    ]
    results, info = torch_child.run(requests, 1, TimingPolicy(), 0, Progress(enabled=False))
    assert results == [{"status": "unavailable", "note": "torch not installed"}]
    assert info["available"] is False


def test_make_step_updates_in_place():
    param, grad = np.ones(10, np.float32), np.ones(10, np.float32)
    for implementation in ("fastopt", "numpy", "ceiling"):
        p = param.copy()
        make_step(implementation, "adam", p, grad)()
        assert not np.array_equal(p, param), implementation


def test_many_tensors_flat_case_equals_the_per_array_case():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in (3, 100, 17)]
    grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
    per_array = [p.copy() for p in params]
    many_tensors_step("fastopt", per_array, grads)()
    # The flat case steps its own copy of the arrays: compare by running it by hand.
    flat = fastopt.FlatParams.from_arrays(params)
    opt = fastopt.Adam(flat, lr=1e-3)
    for view, grad in zip(flat.grads, grads, strict=True):
        view[...] = grad
    opt.step()
    for view, expected in zip(flat.params, per_array, strict=True):
        np.testing.assert_array_equal(view, expected)
    assert callable(many_tensors_step("fastopt-flat", params, grads))


def test_format_time_and_ratio():
    assert format_time(850) == "850 ns"
    assert format_time(12_345) == "12.3 µs"
    assert format_time(45_600_000) == "45.6 ms"
    assert format_time(1.234e9) == "1.23 s"
    assert format_time(None) == "n/a"
    assert format_ratio(123.4) == "123\N{MULTIPLICATION SIGN}"
    assert format_ratio(None) == "n/a"
    assert format_ratio(0.853) == "0.853\N{MULTIPLICATION SIGN}"


def test_small_throughputs_keep_three_significant_digits():
    # a tiny array on a slow machine moves well under 0.05 GB/s: never print it as 0.0
    assert format_number(0.0384) == "0.0384"
    assert format_number(0.5) == "0.5"
    assert format_number(0) == "0.00"
    assert format_number(7.25) == "7.25"
    assert format_number(72.5) == "72.5"
    assert format_number(725.4) == "725"
    assert format_percent(0.000123) == "0.0123%"
    assert format_percent(0.98) == "98.0%"
    # rounding that reaches the next power of ten keeps three digits and the right unit
    assert format_number(9.996) == "10.0"
    assert format_number(99.96) == "100"
    assert format_number(0.99996) == "1.00"
    assert format_time(999.6) == "1.00 µs"


def test_markdown_table_aligns_numbers_right():
    text = markdown_table(("rule", "time"), [("Adam", "1.00 ms"), ("SGD", "12.0 µs")])
    lines = text.splitlines()
    assert lines[0] == "| rule |    time |"
    assert lines[1] == "| ---- | ------: |"
    assert lines[3] == "| SGD  | 12.0 µs |"


def test_document_renders_markdown_and_self_contained_html(tmp_path):
    image = tmp_path / "plot.png"
    image.write_bytes(b"\x89PNG fake")
    document = Document("Title <1>")
    document.heading("Part")
    document.paragraph("uses `code` and **bold** & more")
    document.bullets(["one"])
    document.table(("a", "b"), [("x", "1.5\N{MULTIPLICATION SIGN}")])
    document.image(image, "alt")
    markdown = document.to_markdown(tmp_path)
    assert markdown.startswith("# Title <1>\n\n## Part\n")
    assert "![alt](plot.png)" in markdown
    page = document.to_html()
    assert "<h1>Title &lt;1&gt;</h1>" in page
    assert "<code>code</code> and <b>bold</b> &amp; more" in page
    assert '<td class="num">1.5\N{MULTIPLICATION SIGN}</td>' in page
    assert "data:image/png;base64," in page and "plot.png" not in page


def _results(rows, **extra):
    data = {"schema": SCHEMA, "machine": {}, "config": {"threads": 2}, "rows": rows, **extra}
    return Results(data)


def _row(rule, size, implementation, ns, case="single", spread=0.0):
    """A measured row whose samples' interquartile range is ``spread`` times ``ns``."""
    return {
        "case": case,
        "rule": rule,
        "dtype": "float32",
        "size": size,
        "arrays": 1,
        "implementation": implementation,
        "status": "ok",
        "note": "",
        "median_ns": ns,
        "min_ns": ns * (1 - spread),
        "q1_ns": ns * (1 - spread / 2),
        "q3_ns": ns * (1 + spread / 2),
        "max_ns": ns * (1 + spread),
        "samples": 5,
        "bytes_per_element": RULES[rule].bytes_per_element("float32"),
    }


def test_targets_table_says_met_or_by_how_much_it_missed():
    n = 1 << 24
    rows = [
        _row("adam", n, "fastopt", 100.0),
        _row("adam", n, "ceiling", 97.0),
        _row("adam", n, "numpy", 500.0),
        _row("adam", n, "torch-fused", 90.0),
        _row("adam", 1 << 16, "fastopt", 10.0),
        _row("adam", 1 << 16, "torch-fused", 40.0),
    ]
    overhead = {
        "size": 4096,
        "target_ns": 5000,
        "step": {"median_ns": 13_000.0},
        "python_ns": 10_000.0,
    }
    table = targets_table(_results(rows, overhead=overhead))
    status = {(target, case): s for target, case, _, s in table.rows}
    assert status[("≥ 95% of the same-bytes ceiling", "Adam, n = 2^24")] == "met"
    assert status[("≥ parity with torch fused", "Adam, n = 2^24")] == (
        "missed (0.90 of the target)"
    )
    assert status[("≥ 3\N{MULTIPLICATION SIGN} torch fused", "Adam, n = 2^16")] == "met"
    assert status[("≥ 8\N{MULTIPLICATION SIGN} the NumPy reference", "Adam, n = 2^24")] == (
        "missed (0.62 of the target)"
    )
    overhead_case = "`opt.step` minus the kernel alone, Adam, n = 2^12"
    assert status[("≤ 5.00 µs overhead per call", overhead_case)] == ("missed (0.50 of the target)")


def test_results_round_trip_and_reject_other_files(tmp_path):
    results = _results([_row("sgd", 8, "fastopt", 5.0)])
    path = tmp_path / "run.json"
    save(results.data, path)
    loaded = load(path)
    assert loaded.rows == results.rows
    assert loaded.time_ns("single", "sgd", "float32", 8, "fastopt") == 5.0
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a fastopt benchmark run"):
        load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load(tmp_path / "broken.json")


def _tutorial_quadratic(update, steps=10):
    """The tutorial's scripts, written out independently of fastopt."""
    x, values = 10.0, []
    for _ in range(steps):
        x = update(x)
        values.append(x)
    return values


def test_seed_runs_reproduce_the_tutorial_scripts():
    runs = {run.key: run for run in seed_runs(steps=10, epochs=10)}
    expected = {"gradient_descent": _tutorial_quadratic(lambda x: x - 0.1 * 2 * x)}

    velocity = [0.0]

    def momentum(x):
        velocity[0] = 0.9 * velocity[0] - 0.1 * 2 * x
        return x + velocity[0]

    expected["momentum"] = _tutorial_quadratic(momentum)
    cache = [0.0]

    def adagrad(x):
        cache[0] += (2 * x) ** 2
        return x - 1.0 / (math.sqrt(cache[0]) + 1e-8) * 2 * x

    expected["adagrad"] = _tutorial_quadratic(adagrad)
    square = [0.0]

    def rmsprop(x):
        square[0] = 0.9 * square[0] + 0.1 * (2 * x) ** 2
        return x - 0.1 / (math.sqrt(square[0]) + 1e-8) * 2 * x

    expected["rmsprop"] = _tutorial_quadratic(rmsprop)
    moments = [0.0, 0.0, 0]

    def adam(x):
        g = 2 * x
        moments[2] += 1
        moments[0] = 0.9 * moments[0] + 0.1 * g
        moments[1] = 0.999 * moments[1] + 0.001 * g * g
        m_hat = moments[0] / (1 - 0.9 ** moments[2])
        v_hat = moments[1] / (1 - 0.999 ** moments[2])
        return x - 0.1 / (math.sqrt(v_hat) + 1e-8) * m_hat

    expected["adam"] = _tutorial_quadratic(adam)
    for key, values in expected.items():
        # Adam: fastopt adds eps to sqrt(v)/sqrt(bias correction), the tutorial to sqrt(v_hat)
        np.testing.assert_allclose(runs[key].values, values, rtol=1e-9, err_msg=key)
        assert runs[key].losses == tuple([100.0] + [x * x for x in runs[key].values])

    w = b = 0.0
    fit = []
    for _ in range(10):
        for x in (1.0, 2.0, 3.0, 4.0):
            error = w * x + b - 2 * x
            w, b = w - 0.01 * error * x, b - 0.01 * error
            fit.append((w, b))
    np.testing.assert_allclose(runs["sgd"].values, fit, rtol=1e-12)
    assert len(runs["sgd"].losses) == 41


def test_torch_child_failure_marks_the_rest_unavailable():
    if not torch_child.torch_installed():
        pytest.skip("torch is not installed")
    request = {
        "case": "single",
        "rule": "adam",
        "dtype": "float32",
        "size": 8,
        "implementation": "torch-foreach",
    }
    broken = dict(request, rule="no-such-rule")
    policy = TimingPolicy(warmup=1, repeats=2, min_repeats=1, sample_seconds=0.0)
    results, info = torch_child.run(
        [request, broken, request], 1, policy, 0, Progress(enabled=False)
    )
    assert results[0]["status"] == "ok" and results[0]["median_ns"] > 0
    assert [r["status"] for r in results[1:]] == ["unavailable", "unavailable"]
    assert "no-such-rule" in results[1]["note"]
    assert info["available"] is False and info["version"]


def test_interleaved_timing_samples_every_implementation_in_turn():
    from fastopt.bench.runner import TimingPolicy, time_interleaved

    order = []
    steps = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    policy = TimingPolicy(warmup=1, repeats=4, min_repeats=2, sample_seconds=0.0, max_seconds=1)
    timings = time_interleaved(steps, policy)
    assert {name: t.samples for name, t in timings.items()} == {"a": 4, "b": 4}
    # Warm-up and calibration of each, then one batch of a and one of b per round.
    assert order[4:] == ["a", "b"] * 4


def test_the_ceiling_streams_as_many_state_arrays_as_any_rule_has():
    assert max(case.n_state for case in RULES.values()) <= MAX_STATE


def test_rules_torch_lacks_are_timed_against_their_reference_package():
    """The torch-side run of Lion, LARS and Schedule-Free AdamW: the reference package's
    foreach path where it has one, its per-tensor loop otherwise, and no fused kernel."""
    if not torch_child.torch_installed():
        pytest.skip("torch is not installed")
    for package in ("lion_pytorch", "pytorch_optimizer", "schedulefree"):
        pytest.importorskip(package, reason=f"{package} is not installed")
    rules = ("lion", "lars", "schedule_free_adamw")
    requests = [
        {"case": "single", "rule": rule, "dtype": "float32", "size": 64, "implementation": impl}
        for rule in rules
        for impl in ("torch-fused", "torch-foreach")
    ]
    policy = TimingPolicy(warmup=1, repeats=2, min_repeats=1, sample_seconds=0.0)
    results, _ = torch_child.run(requests, 1, policy, 0, Progress(enabled=False))
    fused, foreach = results[0::2], results[1::2]
    assert [r["status"] for r in fused] == ["unavailable"] * 3
    assert fused[0]["note"] == "TypeError: lion_pytorch.Lion has no fused implementation"
    assert all(r["status"] == "ok" and r["median_ns"] > 0 for r in foreach)
    assert [r["note"] for r in foreach] == [
        "lion_pytorch.Lion (its per-tensor loop)",
        "pytorch_optimizer.LARS (its foreach path)",
        "schedulefree.AdamWScheduleFree (its foreach path)",
    ]
