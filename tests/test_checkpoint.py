"""Checkpoints: exact resume (in a new process too), atomic writes, every corruption caught."""

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from checkpoint_worker import build, train
from rule_cases import CASES, case_id

import fastopt
from fastopt import checkpoint
from fastopt.checkpoint import CheckpointError

WORKER = str(Path(__file__).parent / "checkpoint_worker.py")
AMSGRAD = next(
    i for i, (_, cls, kw) in enumerate(CASES) if cls is fastopt.Adam and kw.get("amsgrad")
)


def snapshot(opt):
    """Every byte an optimizer holds: parameters, state arrays, steps, hyperparameters."""
    state = {
        (index, name): (value.tobytes(), value.dtype, value.shape)
        if isinstance(value, np.ndarray)
        else value
        for index, entry in opt.state.items()
        for name, value in entry.items()
    }
    groups = [
        {k: v for k, v in g.items() if k not in ("params", "schedules")} for g in opt.param_groups
    ]
    params = [(p.tobytes(), p.dtype, p.shape) for p in opt.params]
    return params, state, opt.step_count, repr(groups)


def trained(index, steps):
    opt, scaler = build(index)
    train(opt, scaler, index, 0, steps)
    return opt, scaler


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(c) for c in CASES])
def test_round_trip_restores_every_byte(index, tmp_path):
    opt, scaler = trained(index, 20)
    path = tmp_path / "opt.ckpt"
    fastopt.save(path, opt, extra={"epoch": 3, "order": np.arange(5), "note": (1, "a")})
    fresh, fresh_scaler = build(index)
    ckpt = fastopt.load(path)
    ckpt.restore(fresh)
    assert snapshot(fresh) == snapshot(opt)
    assert fresh_scaler.state_dict() == scaler.state_dict()
    assert ckpt.rule == type(opt).__name__
    assert ckpt.extra["epoch"] == 3 and ckpt.extra["note"] == (1, "a")
    np.testing.assert_array_equal(ckpt.extra["order"], np.arange(5))


def test_resume_in_a_new_process_is_bit_identical_for_every_rule(tmp_path):
    for index in range(len(CASES)):
        opt, _ = trained(index, 50)
        fastopt.save(tmp_path / f"case{index}.ckpt", opt)
    subprocess.run([sys.executable, WORKER, "resume", str(tmp_path), "50", "100"], check=True)
    for index in range(len(CASES)):
        uninterrupted, scaler = trained(index, 100)
        resumed, resumed_scaler = build(index)
        fastopt.load(tmp_path / f"case{index}.ckpt").restore(resumed)
        assert snapshot(resumed) == snapshot(uninterrupted), case_id(CASES[index])
        assert resumed_scaler.state_dict() == scaler.state_dict()
        # Steps with NaN gradients were skipped in both runs: fewer steps than calls.
        assert uninterrupted.step_count < 100


@pytest.mark.slow
@pytest.mark.parametrize("where", ["array", "rename"])
def test_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, where):
    path = tmp_path / "opt.ckpt"
    writer = subprocess.Popen(
        [sys.executable, WORKER, "killed", str(path), where], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "blocked"
        leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) == 1, "the second save should be under way"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    expected, _ = trained(0, 1)
    restored, _ = build(0)
    fastopt.load(path).restore(restored)
    assert snapshot(restored) == snapshot(expected)
    if where == "array":
        with pytest.raises(CheckpointError):
            fastopt.load(leftovers[0])


# ---------------------------------------------------------------------- corruption
@pytest.fixture
def saved(tmp_path):
    opt, _ = trained(AMSGRAD, 3)  # three state arrays per parameter
    path = tmp_path / "opt.ckpt"
    fastopt.save(path, opt)
    return path, opt


def _rewrite(path, change):
    """Rebuild the archive with consistent zip CRCs after ``change(name, bytes)``."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            data = change(name, data)
            if data is not None:
                archive.writestr(name, data)


def _edit_metadata(path, edit):
    def change(name, data):
        if name != "metadata.json":
            return data
        metadata = json.loads(data)
        edit(metadata)
        return json.dumps(metadata)

    _rewrite(path, change)


def _flip_byte_in_array_data(path):
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("arrays/1.npy")
    header = info.header_offset
    name_length = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28 : header + 30], "little")
    last_data_byte = header + 30 + name_length + extra_length + info.compress_size - 1
    raw[last_data_byte] ^= 0x01
    path.write_bytes(bytes(raw))


def _write_plain_npz(path):
    with path.open("wb") as file:
        np.savez(file, a=np.zeros(2))


def _sneak_different_array(path):
    def change(name, data):
        if name != "arrays/1.npy":
            return data
        array = np.load(io.BytesIO(data))
        array.reshape(-1)[0] += 1
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    _rewrite(path, change)


def _pickled_object_array(path):
    marker = path.parent / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    def change(name, data):
        if name != "arrays/0.npy":
            return data
        buffer = io.BytesIO()
        np.save(buffer, np.array([Payload()], dtype=object), allow_pickle=True)
        return buffer.getvalue()

    _rewrite(path, change)
    return marker


CORRUPTIONS = {
    "truncated-half": (
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "truncated",
    ),
    "truncated-tail": (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "not a fastopt checkpoint"),
    "flipped-bit": (_flip_byte_in_array_data, "CRC|corrupted"),
    "checksum": (_sneak_different_array, "SHA-256"),
    "newer-version": (lambda p: _edit_metadata(p, lambda m: m.update(version=2)), "version 2"),
    "wrong-format": (lambda p: _edit_metadata(p, lambda m: m.update(format="x")), "format"),
    "dtype-lie": (
        lambda p: _edit_metadata(p, lambda m: m["arrays"][2].update(dtype="<f8")),
        "metadata says",
    ),
    "missing-array": (
        lambda p: _rewrite(p, lambda n, d: None if n == "arrays/3.npy" else d),
        "lacks",
    ),
    "bad-tag": (
        lambda p: _edit_metadata(p, lambda m: m.update(params={"$array": 10**6})),
        "malformed",
    ),
    "plain-npz": (_write_plain_npz, "no metadata.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_checkpoints_are_rejected(saved, corruption):
    path, _ = saved
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(path)
    with pytest.raises(CheckpointError, match=message):
        fastopt.load(path)


def test_loading_never_unpickles(saved):
    path, _ = saved
    marker = _pickled_object_array(path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        fastopt.load(path)
    assert not marker.exists()


def _other_optimizer(kind):
    if kind == "rule":
        return fastopt.SGD([np.zeros((3, 7), np.float32), np.zeros(1000, np.float32), np.zeros(2)])
    opt, _ = build(AMSGRAD)
    if kind == "shape":
        return type(opt)([np.zeros((7, 3), np.float32), *opt.params[1:]], amsgrad=True)
    if kind == "dtype":
        return type(opt)([*opt.params[:2], np.zeros(2, np.float32)], amsgrad=True)
    if kind == "count":
        return type(opt)(opt.params[:2], amsgrad=True)
    if kind == "groups":
        return type(opt)([{"params": opt.params[:1]}, {"params": opt.params[1:]}], amsgrad=True)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["rule", "shape", "dtype", "count", "groups"])
def test_restore_into_a_mismatched_optimizer_changes_nothing(saved, kind):
    path, _ = saved
    target = _other_optimizer(kind)
    target.step([np.ones_like(p) for p in target.params])
    before = snapshot(target)
    with pytest.raises(CheckpointError):
        fastopt.load(path).restore(target)
    assert snapshot(target) == before


def test_restore_without_params_keeps_the_live_values(saved, tmp_path):
    path, opt = saved
    fresh, _ = build(AMSGRAD)
    values = [p.copy() for p in fresh.params]
    fastopt.load(path).restore(fresh, params=False)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.params, values, strict=True))
    assert fresh.step_count == opt.step_count
    fastopt.save(tmp_path / "no-params.ckpt", opt, params=False)
    with pytest.raises(CheckpointError, match="no parameter values"):
        fastopt.load(tmp_path / "no-params.ckpt").restore(fresh)


def test_unsavable_values_and_failed_writes_leave_the_old_file(saved, monkeypatch):
    path, opt = saved
    original = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['f'\] is a builtin"):
        fastopt.save(path, opt, extra={"f": print})
    with pytest.raises(TypeError, match="numbers only"):
        fastopt.save(path, opt, extra=np.array(["text"]))

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_array", fail)
    with pytest.raises(OSError, match="disk full"):
        fastopt.save(path, opt)
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_same_state_gives_the_same_bytes_and_values_json_lacks_round_trip(tmp_path):
    opt = fastopt.SGD(np.zeros(3), lr=0.1)
    extra = {1: "int key", "$dollar": 2, "nan": float("nan"), "inf": -np.inf, "f32": np.float32(2)}
    fastopt.save(tmp_path / "a", opt, extra=extra)
    fastopt.save(tmp_path / "b", opt, extra=extra)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    loaded = fastopt.load(tmp_path / "a").extra
    assert loaded[1] == "int key" and loaded["$dollar"] == 2 and loaded["f32"] == 2.0
    assert np.isnan(loaded["nan"]) and loaded["inf"] == -np.inf


NOT_BOOLS = {
    "array": np.ones(3),
    "0-d-array": np.array(True),
    "list": [np.zeros(3)],
    "text": "yes",
    "int": 1,
    "none": None,
}


@pytest.mark.parametrize("flag", list(NOT_BOOLS))
def test_params_must_be_a_bool_for_save_and_restore(saved, flag):
    path, opt = saved
    original = path.read_bytes()
    with pytest.raises(TypeError, match="params must be a bool"):
        fastopt.save(path, opt, params=NOT_BOOLS[flag])
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    target, _ = build(AMSGRAD)
    before = snapshot(target)
    with pytest.raises(TypeError, match="params must be a bool"):
        fastopt.load(path).restore(target, params=NOT_BOOLS[flag])
    assert snapshot(target) == before


def test_numpy_bools_are_flags_too(saved, tmp_path):
    path, opt = saved
    fastopt.save(tmp_path / "no-params.ckpt", opt, params=np.False_)
    assert fastopt.load(tmp_path / "no-params.ckpt").params is None
    restored, _ = build(AMSGRAD)
    fastopt.load(path).restore(restored, params=np.True_)
    assert snapshot(restored) == snapshot(opt)


def test_paths_must_be_text(saved):
    path, opt = saved
    with pytest.raises(TypeError, match="path must be a str"):
        fastopt.save(os.fsencode(path), opt)
    with pytest.raises(TypeError, match="path must be a str"):
        fastopt.load(os.fsencode(path))
    with pytest.raises(TypeError):
        fastopt.load(None)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastopt.load(tmp_path / "absent.ckpt")
