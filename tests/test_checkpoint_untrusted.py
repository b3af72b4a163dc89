"""Loading crafted or damaged checkpoints: ``CheckpointError`` in bounded memory, nothing else.

The files here are built with :mod:`zipfile` so that every zip CRC is right and only the one
thing under test is wrong: a ``.npy`` header that lies about the shape, a member that would
inflate to many megabytes, a zip directory that disagrees with the data, duplicate or extra
members, malformed metadata. The hypothesis tests then mutate a real checkpoint at random: its
raw bytes, its members (with the CRCs made right again) and the values in its metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import checkpoint
from fastopt.checkpoint import CheckpointError

# Whatever a refused file claims, loading it stays well below this (the checkpoints here are a
# few kilobytes; the crafted ones claim 50 MB to 373 GiB).
SMALL = 4 * 2**20
BOMB = 50 * 2**20
FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
pytestmark = pytest.mark.filterwarnings("error")  # a warning on a hostile file is a failure too


def optimizer(fill=1.0):
    params = [np.full(5, fill, np.float32), np.full((2, 3), fill)]
    return fastopt.Adam(params, amsgrad=True)


def params_of(opt):
    return [(p.dtype, p.shape, p.tobytes()) for p in opt.params]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real checkpoint's bytes and the parameters it holds.

    It has 9 arrays: the state (``arrays/0.npy`` is parameter 0's ``exp_avg``, float32 of
    shape (5,)), the two parameters and ``extra["order"]`` (``arrays/8.npy``, the last one).
    """
    opt = optimizer()
    opt.step([np.ones(5, np.float32), np.ones((2, 3))])
    path = tmp_path_factory.mktemp("pristine") / "opt.ckpt"
    fastopt.save(path, opt, extra={"epoch": 2, "order": np.arange(4), 7: (1, "a")})
    return path.read_bytes(), params_of(opt)


@pytest.fixture
def saved(pristine, tmp_path):
    path = tmp_path / "opt.ckpt"
    path.write_bytes(pristine[0])
    return path


def members_of(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, members, compressed=()):
    """``members``: ``(name, bytes)`` pairs, written with right CRCs; names in ``compressed``
    are deflated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names some tests want
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members:
                method = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
                archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(fields, version=(1, 0)):
    buffer = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buffer, fields)
    else:
        np.lib.format.write_array_header_2_0(buffer, fields)
    return buffer.getvalue()


def header_size(data):
    stream = io.BytesIO(data)
    np.lib.format.read_magic(stream)
    np.lib.format.read_array_header_1_0(stream)
    return stream.tell()


def edit(path, changes, metadata=None, compressed=()):
    """Rewrite ``path`` with ``changes[name]`` as members' new bytes and ``metadata(dict)``
    applied to the metadata."""
    members = members_of(path)
    members.update(changes)
    if metadata is not None:
        parsed = json.loads(members["metadata.json"])
        metadata(parsed)
        members["metadata.json"] = json.dumps(parsed).encode()
    write_zip(path, members.items(), compressed)


def refused_with_peak(path, match=None):
    """Load ``path`` under tracemalloc; it must raise CheckpointError. Returns the peak bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            fastopt.load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- what save writes loads
def test_every_dtype_and_layout_save_writes_loads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_CHUNK", 7)  # many pieces, none aligned to an element
    rng = np.random.default_rng(0)
    arrays = {
        "big-endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "bool": np.array([True, False, True]),
        "int8": np.arange(-3, 3, dtype=np.int8),
        "uint64": np.array([2**64 - 1, 0], np.uint64),
        "float16": rng.standard_normal(9).astype(np.float16),
        "complex": rng.standard_normal(4) + 1j * rng.standard_normal(4),
        "longdouble": np.linspace(0, 1, 5, dtype=np.longdouble),
        "0-d": np.array(3.5),
        "zero-size": np.zeros((0, 4), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "strided": rng.standard_normal((4, 6))[::2, ::3],
        "large": rng.standard_normal(100_000).astype(np.float32),
    }
    opt = optimizer()
    fastopt.save(tmp_path / "opt.ckpt", opt, extra=arrays)
    loaded = fastopt.load(tmp_path / "opt.ckpt").extra
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


# ---------------------------------------------------------------------- the two crafted files
@pytest.mark.parametrize("metadata_agrees", [False, True], ids=["header-lies", "both-lie"])
def test_npy_header_claiming_a_huge_shape_is_refused_before_allocating(saved, metadata_agrees):
    # Five float32 values under a header claiming 10**11 of them (373 GiB); NumPy's reader
    # would allocate that much before noticing the data is short.
    data = members_of(saved)["arrays/0.npy"]
    lie = npy_header({"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    claim = (lambda m: m["arrays"][0].update(shape=[10**11])) if metadata_agrees else None
    edit(saved, {"arrays/0.npy": lie + data[header_size(data) :]}, claim)
    message = "bytes after its header" if metadata_agrees else r"\[100000000000\], its metadata"
    assert refused_with_peak(saved, message) < SMALL


def bomb(path, nbytes, compressed):
    """Make arrays/0.npy ``nbytes`` of zeros, the metadata agreeing in every respect."""
    zeros = np.zeros(nbytes // 8)
    digest = hashlib.sha256(zeros).hexdigest()

    def describe(metadata):
        metadata["arrays"][0] = {"dtype": "<f8", "shape": [zeros.size], "sha256": digest}

    edit(path, {"arrays/0.npy": npy_bytes(zeros)}, describe, compressed)


def test_a_member_that_would_inflate_hugely_is_refused_unread(saved):
    bomb(saved, BOMB, compressed={"arrays/0.npy"})
    assert saved.stat().st_size < BOMB // 100
    assert refused_with_peak(saved, r"arrays/0\.npy is compressed") < SMALL


def test_the_same_members_stored_load_and_small_ones_deflated_are_refused(saved):
    # What makes the bomb fail is the compression alone: the same layout, stored, loads.
    bomb(saved, 4096, compressed=())
    assert fastopt.load(saved).state_dict["state"][0]["exp_avg"].shape == (512,)
    bomb(saved, 4096, compressed={"arrays/0.npy"})
    with pytest.raises(CheckpointError, match="compressed"):
        fastopt.load(saved)


def test_compressed_metadata_is_refused_unread(saved):
    members = members_of(saved)
    padded = members["metadata.json"] + b" " * BOMB  # still valid JSON once inflated
    write_zip(saved, {**members, "metadata.json": padded}.items(), {"metadata.json"})
    assert saved.stat().st_size < BOMB // 100
    assert refused_with_peak(saved, r"metadata\.json is compressed") < SMALL


def test_the_metadata_size_limit_holds_for_save_and_load(saved, monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "_METADATA_LIMIT", 100)
    assert refused_with_peak(saved, r"metadata\.json is \d+ bytes, over the 100 ") < SMALL
    with pytest.raises(ValueError, match="over the 100 that load accepts"):
        fastopt.save(tmp_path / "new.ckpt", optimizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]


# ---------------------------------------------------------------------- the zip directory
# Offset and width of fields in a central directory entry: general purpose flags, compression
# method, compressed ("stored") and uncompressed size, offset of the local header.
DIRECTORY_FIELDS = {
    "flags": (8, 2),
    "method": (10, 2),
    "stored": (20, 4),
    "size": (24, 4),
    "offset": (42, 4),
}


def patch_directory(path, name, **fields):
    """Overwrite fields of ``name``'s central directory entry (each a function of its value)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        at = archive.start_dir
    while raw[at + 46 : at + 46 + len(name)] != name.encode():
        lengths = [int.from_bytes(raw[at + i : at + i + 2], "little") for i in (28, 30, 32)]
        at += 46 + sum(lengths)
    for field, change in fields.items():
        start, width = DIRECTORY_FIELDS[field]
        old = int.from_bytes(raw[at + start : at + start + width], "little")
        raw[at + start : at + start + width] = change(old).to_bytes(width, "little")
    path.write_bytes(bytes(raw))


def offset_of(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo(name).header_offset


DIRECTORY_LIES = {
    "deflated": ({"method": lambda _: zipfile.ZIP_DEFLATED}, "compressed"),
    "unknown-method": ({"method": lambda _: 99}, r"compressed \(method 99\)"),
    "encrypted": ({"flags": lambda f: f | 0x1}, "encrypted"),
    "two-sizes": ({"size": lambda s: s + 8}, "two sizes"),
    "both-larger": ({"size": lambda s: s + 8, "stored": lambda s: s + 8}, "CRC|after its header"),
    "both-smaller": ({"size": lambda s: s - 8, "stored": lambda s: s - 8}, "CRC|after its header"),
    "past-the-end": (
        {"size": lambda _: 2**32 - 16, "stored": lambda _: 2**32 - 16},
        "more than the file holds",
    ),
}


@pytest.mark.parametrize("lie", list(DIRECTORY_LIES))
def test_a_zip_directory_that_disagrees_with_the_data_is_refused(saved, lie):
    fields, message = DIRECTORY_LIES[lie]
    patch_directory(saved, "arrays/8.npy", **fields)  # the last member, just before the directory
    assert refused_with_peak(saved, message) < SMALL


def test_members_sharing_bytes_are_refused(saved):
    # Overlapping members would let a small file name the same bytes many times over.
    start = offset_of(saved, "arrays/2.npy")
    patch_directory(saved, "arrays/3.npy", offset=lambda _: start)
    with pytest.raises(CheckpointError, match="overlaps"):
        fastopt.load(saved)


@pytest.mark.parametrize(
    "members",
    [
        lambda m: [*m.items(), ("arrays/1.npy", m["arrays/1.npy"])],
        lambda m: [*m.items(), ("metadata.json", m["metadata.json"])],
    ],
    ids=["array", "metadata"],
)
def test_duplicate_members_are_refused(saved, members):
    write_zip(saved, members(members_of(saved)))
    with pytest.raises(CheckpointError, match="more than once"):
        fastopt.load(saved)


@pytest.mark.parametrize("extra_name", ["arrays/9.npy", "arrays/01.npy", "notes.txt"])
def test_members_the_metadata_does_not_list_are_refused(saved, extra_name):
    members = members_of(saved)
    write_zip(saved, [*members.items(), (extra_name, members["arrays/1.npy"])])
    with pytest.raises(CheckpointError, match="does not list"):
        fastopt.load(saved)


# ---------------------------------------------------------------------- .npy headers
def header_text(text):
    data = text.encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(data).to_bytes(2, "little") + data


def five_floats(header):
    return header + np.ones(5, np.float32).tobytes()


NPY_HEADERS = {
    # A header NumPy reads as Python 2 output, with a warning.
    "python2-long": header_text("{'descr': '<f4', 'fortran_order': False, 'shape': (5L,), }\n"),
    # Texts that CPython's parser fails on with MemoryError or RecursionError.
    "unary-chain": header_text("{'descr': " + "-" * 9000 + "1}"),
    "attribute-chain": header_text("{'descr': " + "a." * 4000 + "b}"),
    # np.dtype would parse this as a comma-separated structure, and raise SyntaxError.
    "comma-dtype": header_text("{'descr': ',f4', 'fortran_order': False, 'shape': (5,), }\n"),
    "deprecated-alias": header_text("{'descr': 'a', 'fortran_order': False, 'shape': (5,), }"),
    "indented-tail": header_text("{'descr': '<f4', 'fortran_order': False, 'shape': (5,)}\n  "),
    "fortran": npy_header({"descr": "<f4", "fortran_order": True, "shape": (5,)}),
    "version-3": npy_header({"descr": "<f4", "fortran_order": False, "shape": (5,)}).replace(
        b"NUMPY\x01\x00", b"NUMPY\x03\x00", 1
    ),
    "length-past-the-end": b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{",
    "no-magic": b"\x93NUMPZ\x01\x00",
    "empty": b"",
    "wrong-keys": npy_header({"descr": "<f4", "fortran_order": False, "shape": (5,)}).replace(
        b"'shape'", b"'shapf'"
    ),
}


@pytest.mark.parametrize("header", list(NPY_HEADERS))
def test_malformed_npy_headers_are_refused(saved, header):
    edit(saved, {"arrays/0.npy": five_floats(NPY_HEADERS[header])})
    assert refused_with_peak(saved) < SMALL


def test_a_version_2_header_is_read(saved):
    data = np.ones(5, np.float32)
    header = npy_header({"descr": "<f4", "fortran_order": False, "shape": (5,)}, (2, 0))
    digest = hashlib.sha256(data).hexdigest()
    edit(
        saved,
        {"arrays/0.npy": header + data.tobytes()},
        lambda m: m["arrays"][0].update(sha256=digest),
    )
    np.testing.assert_array_equal(fastopt.load(saved).state_dict["state"][0]["exp_avg"], data)


def test_short_array_data_is_refused(saved):
    data = members_of(saved)["arrays/0.npy"]
    edit(saved, {"arrays/0.npy": data[:-4]})
    with pytest.raises(CheckpointError, match="bytes after its header"):
        fastopt.load(saved)


# ---------------------------------------------------------------------- metadata
def nested(depth):
    return "[" * depth + "]" * depth


def set_entry(key, value, number=0):
    return lambda m: m["arrays"][number].update({key: value})


METADATA_EDITS = {
    "dtype-name": set_entry("dtype", "float32"),
    "dtype-object": set_entry("dtype", "|O"),
    "dtype-text": set_entry("dtype", "<U4"),
    "dtype-struct": set_entry("dtype", "<f4,<f4"),
    "dtype-number": set_entry("dtype", 4),
    "shape-negative": set_entry("shape", [-5]),
    "shape-bool": set_entry("shape", [True]),
    "shape-float": set_entry("shape", [5.0]),
    "shape-text": set_entry("shape", "5"),
    "shape-many-dims": set_entry("shape", [1] * 65),
    "shape-zero-size-huge": set_entry("shape", [0, 2**70]),
    "sha-short": set_entry("sha256", "abc"),
    "sha-upper": set_entry("sha256", "A" * 64),
    "table-entry-extra-key": set_entry("note", 1),
    "unhashable-key": lambda m: m.update(extra={"$items": [[[1, 2], "value"]]}),
    "array-key": lambda m: m.update(extra={"$items": [[{"$array": 0}, "value"]]}),
    "tag-with-extra-key": lambda m: m.update(extra={"$tuple": [], "x": 1}),
    "rule-not-text": lambda m: m.update(rule=["Adam"]),
    "params-not-arrays": lambda m: m.update(params=[1, 2]),
    "no-optimizer": lambda m: m.pop("optimizer"),
}


@pytest.mark.parametrize("change", list(METADATA_EDITS))
def test_malformed_metadata_is_refused(saved, change):
    edit(saved, {}, METADATA_EDITS[change])
    with pytest.raises(CheckpointError, match=r"malformed|metadata says"):
        fastopt.load(saved)


RAW_METADATA = {
    "not-utf8": b"\xff\xfe{",
    "nan-constant": b'{"format": "fastopt.checkpoint", "version": NaN}',
    "huge-integer": b'{"format": "fastopt.checkpoint", "version": ' + b"9" * 5000 + b"}",
    "deep-nesting": nested(100_000).encode(),
    "not-an-object": b"[1, 2]",
}


@pytest.mark.parametrize("text", list(RAW_METADATA))
def test_metadata_that_is_not_a_checkpoint_s_json_is_refused(saved, text):
    edit(saved, {"metadata.json": RAW_METADATA[text]})
    with pytest.raises(CheckpointError):
        fastopt.load(saved)


@pytest.mark.parametrize("depth", [600, 5000])
def test_deeply_nested_extra_is_refused_or_loaded(saved, depth):
    # Deeper than the decoder's recursion may go, and than the JSON parser's.
    members = members_of(saved)
    metadata = json.loads(members["metadata.json"])
    metadata["extra"] = "nested"
    text = json.dumps(metadata).replace('"nested"', nested(depth))
    edit(saved, {"metadata.json": text.encode()})
    try:
        extra = fastopt.load(saved).extra
    except CheckpointError as error:
        assert "nested too deeply" in str(error) or "not valid JSON" in str(error)
    else:
        for _ in range(depth - 1):
            (extra,) = extra
        assert extra == []


# ---------------------------------------------------------------------- fuzzing
EDITS = ["flip", "set", "cut", "insert", "delete", "zero"]


def mutate(raw: bytearray, data, label):
    how = data.draw(st.sampled_from(EDITS), label=f"{label} edit")
    at = data.draw(st.integers(0, len(raw)), label=f"{label} at")
    if how == "flip" and at < len(raw):
        raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif how == "set" and at < len(raw):
        raw[at] = data.draw(st.sampled_from([0x00, 0x01, 0x08, 0x7F, 0x80, 0xFF]), label="byte")
    elif how == "cut":
        del raw[at:]
    elif how == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="inserted")
    elif how == "delete":
        del raw[at : at + data.draw(st.integers(1, 16), label="deleted")]
    elif how == "zero":
        raw[at : at + 16] = bytes(len(raw[at : at + 16]))


def load_or_refuse(path):
    """Load ``path`` and restore it into a fresh optimizer: a result or CheckpointError only."""
    try:
        loaded = fastopt.load(path)
    except CheckpointError:
        event("refused by load")
        return None
    target = optimizer(fill=0.0)
    before = params_of(target)
    try:
        loaded.restore(target)
    except CheckpointError:
        event("loaded, refused by restore")
        assert params_of(target) == before and target.step_count == 0
    else:
        event("loaded and restored")
    return loaded, target


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("mutated") / "opt.ckpt"


@FUZZ
@given(data=st.data())
def test_files_with_mutated_bytes_load_intact_or_raise_checkpoint_error(pristine, scratch, data):
    original, saved_params = pristine
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        mutate(raw, data, "file")
    scratch.write_bytes(bytes(raw))
    outcome = load_or_refuse(scratch)
    if outcome is not None:
        # Only bytes the reader ignores (timestamps, unused fields, a prefix before the
        # archive) may change unnoticed, so what loaded is what was saved.
        loaded, target = outcome
        assert params_of(target) == saved_params and target.step_count == 1
        assert loaded.extra["epoch"] == 2 and loaded.extra[7] == (1, "a")


@FUZZ
@given(data=st.data())
def test_files_with_mutated_members_load_or_raise_checkpoint_error(pristine, scratch, data):
    # The archive is rewritten with right CRCs, so that the checks behind them are reached.
    members = [[name, bytearray(content)] for name, content in members_of_bytes(pristine[0])]
    compressed = set()
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        member = data.draw(st.sampled_from(members), label="member")
        change = data.draw(
            st.sampled_from(["bytes", "bytes", "bytes", "drop", "copy", "rename", "deflate"]),
            label="change",
        )
        if change == "bytes":
            mutate(member[1], data, member[0])
        elif change == "drop" and len(members) > 1:
            members.remove(member)
        elif change == "copy":
            members.append([member[0], bytearray(member[1])])
        elif change == "rename":
            names = ["metadata.json", "arrays/0.npy", "arrays/9.npy", "arrays/00.npy", "x"]
            member[0] = data.draw(st.sampled_from(names), label="name")
        else:
            compressed.add(member[0])
    write_zip(scratch, [(name, bytes(content)) for name, content in members], compressed)
    load_or_refuse(scratch)


def members_of_bytes(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


def json_paths(value, path=()):
    """Every place in a JSON value, as the keys and indices that lead there."""
    yield path
    if isinstance(value, (dict, list)):
        for key, inner in value.items() if isinstance(value, dict) else enumerate(value):
            yield from json_paths(inner, (*path, key))


# JSON values, keys among the state's names and the metadata's tags, so that tagged objects
# ({"$array": 3}, {"$items": [...]}, ...) and plausible state entries come up.
KEYS = ["$array", "$tuple", "$items", "$float", "step", "exp_avg", "lr", "params", "state"]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 12)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["nan", "inf", "<f4", "|O", "Adam", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_files_with_mutated_metadata_load_or_raise_checkpoint_error(pristine, scratch, data):
    # Well-formed JSON with values swapped out: the decoder, the array table's checks and
    # restore's checks are what must catch it.
    members = dict(members_of_bytes(pristine[0]))
    metadata = json.loads(members["metadata.json"])
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        *parents, last = data.draw(st.sampled_from(list(json_paths(metadata))[1:]), label="at")
        node = metadata
        for key in parents:
            node = node[key]
        node[last] = data.draw(JSON, label="value")
    members["metadata.json"] = json.dumps(metadata).encode()
    write_zip(scratch, members.items())
    load_or_refuse(scratch)
