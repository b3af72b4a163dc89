"""Checkpoints that cannot run code, cannot be half-written and are safe to load from anywhere.

A checkpoint is one zip archive holding ``metadata.json`` and one ``.npy`` member per array
(``arrays/0.npy``, ``arrays/1.npy``, ...), every member stored uncompressed:

- **No pickle.** Everything but the arrays is JSON, and an array member whose ``.npy`` header
  asks for Python objects is refused, so loading a checkpoint cannot execute code. Values JSON
  lacks are tagged objects (``{"$tuple": [...]}``, ``{"$float": "nan"}``, ``{"$items": [[key,
  value], ...]}`` for dicts with non-string keys, ``{"$array": i}`` for array ``i``,
  ``{"$bfloat16": i}`` for a bfloat16 array whose bits, uint16, are array ``i``).
- **Atomic.** The archive is written to a temporary file beside the target, flushed and
  ``fsync``-ed, renamed over the target (``os.replace``, atomic on POSIX and Windows) and the
  directory is ``fsync``-ed. A crash or ``SIGKILL`` at any point leaves either the previous
  checkpoint or the new one, never a mix; at worst a ``.<name>.<random>.tmp`` file remains.
- **Checked before use.** The metadata carries a format name and version and, per array, its
  dtype, shape and SHA-256; :func:`load` verifies all of them (and the zip CRCs), and
  :meth:`Checkpoint.restore` then checks the rule, the parameter shapes and dtypes and the
  whole state before it changes anything.
- **Safe to load from anywhere.** Whatever bytes the file holds, :func:`load` either returns
  a :class:`Checkpoint` that passed every check listed here or raises :class:`CheckpointError`
  (:class:`OSError` only when the file cannot be opened), in memory proportional to the
  file's size and time little more. Before it reads any member it checks the zip directory:
  every member is stored (never compressed or encrypted), its two sizes agree, and members
  do not overlap and end within the file. ``metadata.json`` must then be at most 64 MiB, and
  the archive must hold it and exactly the arrays its metadata lists, each once. Before it
  reads an array's data it checks the member's ``.npy`` header: a version 1.0 or 2.0 header
  with the dtype, shape and C order of the array's metadata entry, after which the member
  holds exactly the bytes this dtype and shape take. Only then is the array allocated and
  those bytes read into it, so nothing is ever inflated and the arrays allocated add up to at
  most the file's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import struct
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fastopt._backend import backend_of
from fastopt._checks import check_bool
from fastopt._shards import assemble
from fastopt._words import plural, with_article
from fastopt.optimizer import Optimizer
from fastopt.precision import BFLOAT16 as _BFLOAT16

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load",
    "save",
]

#: The ``format`` entry of every checkpoint's metadata.
FORMAT = "fastopt.checkpoint"
#: The layout version this fastopt writes and reads.
FORMAT_VERSION = 1

_METADATA = "metadata.json"
# A fixed member timestamp: the same state always gives the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)

# The largest metadata.json that save writes and load reads (64 MiB). It holds hyperparameters
# and a table entry per array, a few hundred bytes per parameter; the bound keeps a hostile
# file from making the JSON parser build gigabytes of objects.
_METADATA_LIMIT = 64 * 2**20
# How much of an array member is read to parse its .npy header: NumPy refuses headers longer
# than 10,000 characters, so a valid one always ends within this prefix.
_NPY_PREFIX = 2**16
# Array data is read (and hashed) into the array allocated for it in pieces of 1 MiB: few
# enough that the loop costs nothing, small enough to add little to the peak memory.
_CHUNK = 2**20
# A local file header is 30 bytes before the member's name and data.
_LOCAL_HEADER = 30
# Flag bits a checkpoint member may carry: "sizes in a data descriptor" (written when the
# target is not seekable) and "UTF-8 name". Encryption and the rest are refused.
_ALLOWED_FLAGS = 0x08 | 0x800
# The dtypes save writes, as ``dtype.str`` spells them: booleans and numbers, any byte order.
_DTYPE = re.compile(r"[<>|][biufc][0-9]{1,2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# NumPy's limit on the number of dimensions (NPY_MAXDIMS since NumPy 2.0).
_MAX_DIMS = 64
# The .npy versions NumPy writes for numeric arrays, each with the size of its header length.
_NPY_VERSIONS = {(1, 0): 2, (2, 0): 4}
# The header NumPy writes for a numeric array, "{'descr': '<f4', 'fortran_order': False,
# 'shape': (2, 3), }" and padding, spelt loosely (any keys and spacing): a dict literal of
# booleans, tuples of integers and numeric type codes ('|O' too, to be refused by name). Other
# codes could make np.dtype parse comma strings or warn. What else NumPy requires, it checks.
_WS = r"[ \t\n]*"
_INT = r"(?:0|[1-9][0-9]{0,19})"
_TUPLE = rf"\({_WS}(?:{_INT}{_WS},{_WS})*(?:{_INT}{_WS})?\)"
_VALUE = rf"(?:'[<>|]?[biufcO][0-9]{{0,2}}'|True|False|{_TUPLE})"
_ENTRY = rf"'[a-z_]+'{_WS}:{_WS}{_VALUE}{_WS}"
# After the brace, spaces and one newline: an indented line would be a Python syntax error.
_NPY_HEADER = re.compile(rf"\{{{_WS}(?:{_ENTRY},{_WS})*(?:{_ENTRY})?\}}[ \t]*\n?")


class CheckpointError(ValueError):
    """A checkpoint is unreadable, corrupted, of another version, or does not fit."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint, read whole into memory by :func:`load`.

    Attributes
    ----------
    rule : str
        The optimizer's class name (``"Adam"``, ...).
    state_dict : dict
        What :meth:`Optimizer.state_dict` returned when it was saved.
    params : list of ndarray or None
        The parameter values, in the optimizer's order, if they were saved.
    extra : object
        The ``extra`` value given to :func:`save` (``None`` if none).
    """

    rule: str
    state_dict: dict[str, Any]
    params: list[np.ndarray] | None
    extra: Any

    def restore(self, optimizer: Optimizer, *, params: bool = True) -> None:
        """Put the saved state (and parameter values) into ``optimizer``, all or nothing.

        Parameters
        ----------
        optimizer
            Built like the one that was saved: same class, parameter shapes and dtypes,
            groups and schedules. Saved hyperparameter values replace the current ones. A
            :class:`~fastopt.distributed.ZeroRedundancyOptimizer` of any world size too
            (every rank calls this; each takes its shard).
        params
            Also copy the saved parameter values into the optimizer's parameters (a ``bool``).

        Raises
        ------
        TypeError
            If ``optimizer`` is not a fastopt optimizer or ``params`` is not a ``bool``.
        CheckpointError
            If the checkpoint does not fit ``optimizer``; nothing has changed then.
        """
        if isinstance(optimizer, Optimizer):
            rule = type(optimizer).__name__
        elif hasattr(optimizer, "_save_checkpoint"):  # a ZeroRedundancyOptimizer
            rule = optimizer.rule
        else:
            raise TypeError(f"optimizer must be a fastopt Optimizer, got {type(optimizer)}")
        params = check_bool("params", params)
        if rule != self.rule:
            raise CheckpointError(
                f"the checkpoint holds {with_article(self.rule)} optimizer, not "
                f"{with_article(rule)}"
            )
        live = optimizer.params
        if params:
            self._check_params(live)
        try:
            optimizer.load_state_dict(self.state_dict)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"the checkpoint does not fit the optimizer: {error}") from error
        if params:
            for target, saved in zip(live, self.params or (), strict=True):
                if isinstance(target, np.ndarray):
                    np.copyto(target, saved)
                else:  # a CUDA device array: copied in place, through a flat device view
                    backend_of(target).flat(target).copy_to_device(saved.reshape(-1))

    def _check_params(self, live: list[np.ndarray]) -> None:
        if self.params is None:
            raise CheckpointError("the checkpoint holds no parameter values; pass params=False")
        if len(self.params) != len(live):
            raise CheckpointError(
                f"the checkpoint holds {plural(len(self.params), 'parameter')}, "
                f"the optimizer has {len(live)}"
            )
        for index, (target, saved) in enumerate(zip(live, self.params, strict=True)):
            dtype, shape = backend_of(target).dtype_shape(target)
            if shape != saved.shape or dtype != saved.dtype:
                raise CheckpointError(
                    f"parameter {index} is {dtype} {shape} in the optimizer but "
                    f"{saved.dtype} {saved.shape} in the checkpoint"
                )
            if isinstance(target, np.ndarray) and not target.flags.writeable:
                raise CheckpointError(f"parameter {index} of the optimizer is read-only")


# ---------------------------------------------------------------------- JSON encoding
def _encode(value: Any, where: str, arrays: list[np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype == _BFLOAT16:  # NumPy has no name for it: stored as its bits
            return {"$bfloat16": _encode(value.view(np.uint16), where, arrays)["$array"]}
        if value.dtype.kind not in "biufc":
            raise TypeError(f"{where} has dtype {value.dtype}; a checkpoint stores numbers only")
        # A plain ndarray in C order; ascontiguousarray alone would make a 0-d array 1-d.
        value = np.asarray(value)
        arrays.append(value if value.flags.c_contiguous else np.ascontiguousarray(value))
        return {"$array": len(arrays) - 1}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{where}[{k!r}]", arrays) for k, v in value.items()}
        return {
            "$items": [
                [_encode(k, f"{where} key {k!r}", arrays), _encode(v, f"{where}[{k!r}]", arrays)]
                for k, v in value.items()
            ]
        }
    raise TypeError(
        f"{where} is {with_article(type(value).__name__)}, which a checkpoint cannot store "
        "(JSON values and numeric arrays only: no pickle)"
    )


def _decode(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k.startswith("$")]
    if not tags:
        return {k: _decode(v, arrays) for k, v in value.items()}
    if len(value) != 1:
        raise CheckpointError(f"malformed metadata: tagged object with extra keys {sorted(value)}")
    tag, content = next(iter(value.items()))
    if tag == "$array" and type(content) is int and 0 <= content < len(arrays):
        return arrays[content]
    if tag == "$bfloat16" and type(content) is int and 0 <= content < len(arrays):
        bits = arrays[content]
        if bits.dtype != np.uint16:
            raise CheckpointError(f"malformed metadata: $bfloat16 array {content} is not uint16")
        return bits.view(_BFLOAT16)
    if tag == "$tuple" and isinstance(content, list):
        return tuple(_decode(v, arrays) for v in content)
    if tag == "$float" and content in ("nan", "inf", "-inf"):
        return float(content)
    if tag == "$items" and isinstance(content, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in content):
            raise CheckpointError("malformed metadata: $items must hold [key, value] pairs")
        try:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in content}
        except TypeError as error:  # a key that cannot be hashed: a list, a dict, an array
            raise CheckpointError(f"malformed metadata: $items key: {error}") from None
    raise CheckpointError(f"malformed metadata: unknown or invalid {tag!r} entry")


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


# ---------------------------------------------------------------------- writing
def save(
    path: str | os.PathLike[str],
    optimizer: Optimizer,
    *,
    params: bool = True,
    extra: Any = None,
    sharded: bool = False,
) -> None:
    """Write ``optimizer``'s checkpoint to ``path`` atomically (see the module notes).

    Parameters
    ----------
    path
        The file to create or replace (``.ckpt`` or ``.zip``; the name is not checked).
    optimizer
        Its :meth:`~fastopt.Optimizer.state_dict` is saved: state arrays, hyperparameters,
        step counts and attached objects (a :class:`~fastopt.LossScaler`, say).
    params
        Also save the parameter values, so that :meth:`Checkpoint.restore` resumes exactly
        (a ``bool``).
    extra
        Anything else to keep (epoch, data order, ...): JSON values, tuples, numeric arrays
        and dicts of them. Large data belongs in arrays: the JSON part of a checkpoint
        (``metadata.json``) is limited to 64 MiB.
    sharded
        For a :class:`~fastopt.distributed.ZeroRedundancyOptimizer` (whose ``save`` every
        rank calls): ``False`` gathers the whole state on rank 0, which writes one checkpoint
        that any optimizer loads; ``True`` makes ``path`` a directory where each rank writes
        its shard (see :func:`fastopt.distributed.save_collectively`). :func:`load` reads either.

    Raises
    ------
    TypeError
        If ``path``, ``optimizer``, ``params`` or ``sharded`` is of the wrong type, or
        something to save is neither a JSON value nor a numeric array; nothing is written.
    ValueError
        If the JSON part would exceed 64 MiB; nothing is written.

    Examples
    --------
    >>> import os, tempfile, numpy as np, fastopt
    >>> w = np.zeros(3); opt = fastopt.Adam(w, lr=0.1)
    >>> opt.step(np.ones(3))
    >>> path = os.path.join(tempfile.mkdtemp(), "opt.ckpt")
    >>> fastopt.save(path, opt, extra={"epoch": 1})
    >>> w[:] = 0.0; opt2 = fastopt.Adam(w, lr=0.1)
    >>> ckpt = fastopt.load(path); ckpt.restore(opt2)
    >>> w, opt2.step_count, ckpt.extra
    (array([-0.1, -0.1, -0.1]), 1, {'epoch': 1})
    """
    path = _path(path)
    params = check_bool("params", params)
    sharded = check_bool("sharded", sharded)
    if hasattr(optimizer, "_save_checkpoint"):  # a ZeroRedundancyOptimizer: collective
        optimizer._save_checkpoint(path, params=params, extra=extra, sharded=sharded)
        return
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt Optimizer, got {type(optimizer).__name__}")
    if sharded:
        raise ValueError("sharded=True saves a ZeroRedundancyOptimizer's shards, one per rank")
    write_checkpoint(
        path,
        type(optimizer).__name__,
        optimizer.state_dict(),
        _host_copies(optimizer.params) if params else None,
        extra,
    )


def write_checkpoint(
    path: str, rule: str, state_dict: Mapping[str, Any], params: list[Any] | None, extra: Any
) -> None:
    """Encode a checkpoint and write it atomically (what :func:`save` does once it has the
    optimizer's ``state_dict``)."""
    arrays: list[np.ndarray] = []
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "rule": rule,
        "optimizer": _encode(state_dict, "state_dict", arrays),
        "params": _encode(params, "params", arrays) if params is not None else None,
        "extra": _encode(extra, "extra", arrays),
    }
    metadata["arrays"] = [
        {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)} for a in arrays
    ]
    text = json.dumps(metadata, allow_nan=False, indent=1)  # ASCII: one byte per character
    if len(text) > _METADATA_LIMIT:
        raise ValueError(
            f"the checkpoint's metadata would be {len(text)} bytes, over the {_METADATA_LIMIT} "
            "that load accepts; keep large values in extra as numeric arrays"
        )
    _write_atomically(path, text, arrays)


def _path(path: str | os.PathLike[str]) -> str:
    # os.fspath accepts bytes too, which the file names built beside the target cannot mix with.
    name = os.fspath(path)
    if not isinstance(name, str):
        raise TypeError(f"path must be a str or an os.PathLike of str, got {type(path).__name__}")
    return name


def _host_copies(params: list[Any]) -> list[np.ndarray]:
    # Host arrays are encoded as they are (no copy); device arrays are copied to the host.
    return [p if isinstance(p, np.ndarray) else backend_of(p).to_host(p) for p in params]


def _member(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, date_time=_EPOCH)


def _write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(_member(name), "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _write_atomically(path: str, text: str, arrays: list[np.ndarray]) -> None:
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    # Created like any new file (0o666 less the umask), unlike tempfile's private 0o600.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.writestr(_member(_METADATA), text)
                for number, array in enumerate(arrays):
                    _write_array(archive, f"arrays/{number}.npy", array)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable. POSIX only: Windows cannot open a directory.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------- reading
class _ArraySpec(NamedTuple):
    """One entry of the metadata's array table, checked."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int
    sha256: str


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save`.

    Whatever the file holds, this either returns a verified checkpoint or raises
    :class:`CheckpointError`, in memory proportional to the file's size: every member is
    checked against the zip directory and the metadata before any of its data is read, and
    nothing is decompressed or unpickled (see the module notes).

    Parameters
    ----------
    path
        The checkpoint file, or the directory of a sharded one (``save(..., sharded=True)``):
        its shards are put together into the whole state, for any world size.

    Returns
    -------
    Checkpoint
        The saved state, parameter values and ``extra``, to :meth:`~Checkpoint.restore`.

    Raises
    ------
    CheckpointError
        If the file is not a fastopt checkpoint, is truncated or corrupted (zip CRC or
        SHA-256 mismatch), has another format version, its metadata is malformed, or a member
        is compressed, encrypted, duplicated, unexpected, or disagrees with the metadata.
    TypeError
        If ``path`` is neither a ``str`` nor an ``os.PathLike`` of ``str``.
    OSError
        If the file cannot be opened.
    """
    path = _path(path)
    if os.path.isdir(path):
        return load_shards(path)
    with open(path, "rb") as file:  # a missing or unreadable file is an OSError, as usual
        try:
            size = file.seek(0, os.SEEK_END)
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                members = _members(archive, min(size, archive.start_dir), path)
                metadata, specs = _read_metadata(archive, members.get(_METADATA), path)
                _check_member_names(members, len(specs), path)
                arrays = [
                    _read_array(archive, members[f"arrays/{number}.npy"], spec)
                    for number, spec in enumerate(specs)
                ]
        except CheckpointError:
            raise
        # What zipfile raises on damaged structures: bad CRCs, magic numbers and names
        # (BadZipFile), data past the end (EOFError, OSError), offsets too large to seek to
        # (OverflowError), names that are not UTF-8 (ValueError), a "version needed to
        # extract" beyond its own (NotImplementedError), short fields (struct.error).
        except (
            zipfile.BadZipFile,
            EOFError,
            OSError,
            OverflowError,
            ValueError,
            NotImplementedError,
            struct.error,
        ) as error:
            raise CheckpointError(
                f"{path} is not a fastopt checkpoint, or is truncated or corrupted: {error!r}"
            ) from error
    return _checkpoint(metadata, arrays)


def _members(archive: zipfile.ZipFile, end: int, path: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, each checked against the zip directory alone.

    ``end`` is where the members' data must stop: the start of the central directory, which
    lies within the file. Members must not overlap: a member's data is at least its local
    header, name and stored size long, so disjoint members add up to at most ``end`` bytes,
    which bounds everything :func:`load` reads and allocates (overlapping members would let a
    small file name the same bytes any number of times).
    """
    infos = archive.infolist()
    members = {info.filename: info for info in infos}
    if len(members) != len(infos):
        twice = sorted(
            name for name, count in Counter(i.filename for i in infos).items() if count > 1
        )
        raise CheckpointError(f"{path} holds {twice[:5]} more than once: it was tampered with")
    reached = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        name = info.filename
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: {name} is compressed (method {info.compress_type}); a checkpoint "
                "stores its members uncompressed and never inflates one"
            )
        if info.flag_bits & ~_ALLOWED_FLAGS:
            raise CheckpointError(
                f"{path}: {name} is encrypted or uses zip features a checkpoint never does "
                f"(flags {info.flag_bits:#06x})"
            )
        if info.compress_size != info.file_size:
            raise CheckpointError(
                f"{path}: the zip directory gives {name} two sizes ({info.compress_size} stored, "
                f"{info.file_size} uncompressed): the checkpoint is corrupted"
            )
        if info.header_offset < reached:
            raise CheckpointError(f"{path}: {name} overlaps another member: it was tampered with")
        # A lower bound on where the member's data ends: the local header's name may take more
        # bytes than characters, and its extra field is not counted.
        reached = info.header_offset + _LOCAL_HEADER + len(info.orig_filename) + info.file_size
    if reached > end:
        raise CheckpointError(
            f"{path}: its members claim {reached} bytes, more than the file holds: it is "
            "truncated or corrupted"
        )
    return members


def _check_member_names(members: Mapping[str, zipfile.ZipInfo], count: int, path: str) -> None:
    expected = [_METADATA, *(f"arrays/{number}.npy" for number in range(count))]
    missing = [name for name in expected if name not in members]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {missing[0]}: it is incomplete")
    if len(members) != len(expected):
        unexpected = sorted(set(members) - set(expected))
        raise CheckpointError(
            f"{path} holds members its metadata does not list ({unexpected[:5]}): it is not a "
            "checkpoint as save writes it"
        )


def _read_metadata(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo | None, path: str
) -> tuple[dict[str, Any], list[_ArraySpec]]:
    if info is None:
        raise CheckpointError(f"{path} has no {_METADATA}: not a fastopt checkpoint")
    if info.file_size > _METADATA_LIMIT:
        raise CheckpointError(
            f"{path}: {_METADATA} is {info.file_size} bytes, over the {_METADATA_LIMIT} a "
            "checkpoint's metadata may take"
        )
    raw = archive.read(info)  # stored and bounded: exactly file_size bytes
    try:
        metadata = json.loads(raw, parse_constant=_reject_constant)
    # Not UTF-8, not JSON, a NaN constant, an integer of more than 4300 digits (ValueError),
    # or nesting deeper than the parser's recursion limit.
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path}: {_METADATA} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastopt checkpoint (no format {FORMAT!r})")
    version = metadata.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this fastopt reads version "
            f"{FORMAT_VERSION}"
        )
    entries = metadata.get("arrays")
    keys = {"dtype", "shape", "sha256"}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and set(e) == keys for e in entries
    ):
        raise CheckpointError(f"{path}: malformed metadata (array table)")
    for key in ("rule", "optimizer"):
        if key not in metadata:
            raise CheckpointError(f"{path}: malformed metadata (no {key!r})")
    return metadata, [_array_spec(entry, number, path) for number, entry in enumerate(entries)]


def _array_spec(entry: Mapping[str, Any], number: int, path: str) -> _ArraySpec:
    text, shape, digest = entry["dtype"], entry["shape"], entry["sha256"]
    where = f"{path}: malformed metadata (array {number}"
    # Only the spellings save writes: np.dtype would also build strings, objects, structures.
    if not isinstance(text, str) or not _DTYPE.fullmatch(text):
        raise CheckpointError(f"{where} has dtype {text!r}, not a numeric one)")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise CheckpointError(f"{where} has dtype {text!r}, which NumPy lacks)") from None
    if dtype.str != text:
        raise CheckpointError(f"{where} has dtype {text!r}, which NumPy spells {dtype.str!r})")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise CheckpointError(f"{where} has shape {shape!r})")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise CheckpointError(f"{where} has no SHA-256 in hex)")
    return _ArraySpec(dtype, tuple(shape), dtype.itemsize * math.prod(shape), digest)


def _reject_constant(name: str) -> None:
    raise CheckpointError(f"malformed metadata: {name} is not JSON")


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, spec: _ArraySpec) -> np.ndarray:
    name = info.filename
    with archive.open(info) as member:
        prefix = member.read(min(info.file_size, _NPY_PREFIX))
        dtype, shape, fortran_order, header_size = _npy_header(prefix, name)
        if dtype.hasobject:
            raise CheckpointError(
                f"{name} holds Python objects, which only pickle could read (allow_pickle); "
                "a checkpoint never unpickles"
            )
        if dtype != spec.dtype or dtype.str != spec.dtype.str or shape != spec.shape:
            raise CheckpointError(
                f"{name} is {dtype.str} {list(shape)}, its metadata says "
                f"{spec.dtype.str} {list(spec.shape)}"
            )
        if fortran_order:
            raise CheckpointError(f"{name} is in Fortran order; save writes C order only")
        if info.file_size - header_size != spec.nbytes:
            raise CheckpointError(
                f"{name} holds {info.file_size - header_size} bytes after its header, its "
                f"metadata says {spec.dtype.str} {list(spec.shape)} ({spec.nbytes} bytes): the "
                "checkpoint is corrupted"
            )
        # Only now, with the size known to be within the file, is the array allocated.
        try:
            array = np.empty(spec.shape, spec.dtype)
        except ValueError as error:  # a zero-size shape with a dimension beyond NumPy's range
            raise CheckpointError(f"{name} has a shape NumPy cannot hold: {error}") from None
        data = array.reshape(-1).view(np.uint8)
        digest = hashlib.sha256()
        filled = _fill(data, 0, prefix[header_size:], digest)
        while filled < spec.nbytes:
            chunk = member.read(min(_CHUNK, spec.nbytes - filled))
            if not chunk:
                raise EOFError(f"{name} ends after {filled} of {spec.nbytes} bytes of data")
            filled = _fill(data, filled, chunk, digest)
        # Reading the member's last byte made zipfile check its CRC.
    if digest.hexdigest() != spec.sha256:
        raise CheckpointError(f"{name} fails its SHA-256 check: the checkpoint is corrupted")
    return array


def _fill(data: np.ndarray, start: int, chunk: bytes, digest: Any) -> int:
    data[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
    digest.update(chunk)
    return start + len(chunk)


def _npy_header(prefix: bytes, name: str) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """Parse the ``.npy`` header at the start of ``prefix``; also say where it ends."""
    stream = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_VERSIONS:  # 3.0 is for non-Latin-1 field names: never numeric
            raise CheckpointError(f"{name} is a .npy file of version {version}, not 1.0 or 2.0")
        start = stream.tell() + _NPY_VERSIONS[version]
        length = int.from_bytes(prefix[stream.tell() : start], "little")
        text = prefix[start : start + length].decode("latin-1")
        # CPython's parser fails on some short texts with MemoryError or RecursionError (a few
        # thousand "-" or "a.b"), and NumPy retries text it cannot parse as Python 2 output,
        # with a warning. Only the literal NumPy writes for a numeric array reaches its parser.
        if not _NPY_HEADER.fullmatch(text):
            raise CheckpointError(f"{name} has a malformed .npy header: {text[:200]!r}")
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    except CheckpointError:
        raise
    except ValueError as error:  # NumPy's word for a short, misspelt or unknown header
        raise CheckpointError(f"{name} is not a valid array: {error}") from error
    return dtype, shape, fortran_order, stream.tell()


def _checkpoint(metadata: Mapping[str, Any], arrays: list[np.ndarray]) -> Checkpoint:
    rule = metadata["rule"]
    try:
        state_dict = _decode(metadata["optimizer"], arrays)
        params = _decode(metadata.get("params"), arrays)
        extra = _decode(metadata.get("extra"), arrays)
    except RecursionError:
        raise CheckpointError("malformed metadata: nested too deeply") from None
    if not isinstance(rule, str) or not isinstance(state_dict, dict):
        raise CheckpointError("malformed metadata: 'rule' or 'optimizer'")
    if params is not None and not (
        isinstance(params, list) and all(isinstance(p, np.ndarray) for p in params)
    ):
        raise CheckpointError("malformed metadata: 'params' must be a list of arrays")
    return Checkpoint(rule, state_dict, params, extra)


#: The file of a sharded checkpoint that names its shards; written last, atomically.
SHARD_INDEX = "index.ckpt"


def shard_name(token: str, rank: int, world: int) -> str:
    """The file name of shard ``rank`` of ``world`` in the save ``token`` names."""
    return f"shard-{token}-{rank:05d}-of-{world:05d}.ckpt"


def load_shards(path: str) -> Checkpoint:
    """:func:`fastopt.load` of a sharded checkpoint's directory: the whole state and
    parameters, put together from the shards its index names (no MPI needed)."""
    index = load(os.path.join(path, SHARD_INDEX))
    about = index.state_dict.get("sharded")
    if not (
        isinstance(about, dict)
        and type(about.get("world")) is int
        and about["world"] > 0
        and isinstance(about.get("token"), str)
        and about["token"].isalnum()
    ):
        raise CheckpointError(f"{path}: malformed {SHARD_INDEX}")
    world, token = about["world"], about["token"]
    shards = []
    for rank in range(world):
        name = os.path.join(path, shard_name(token, rank, world))
        try:
            shards.append(load(name))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: shard {rank} of {world} is missing ({name})") from None
    parts = [shard.state_dict for shard in shards]
    first = parts[0].get("shard", {})
    for rank, (shard, part) in enumerate(zip(shards, parts, strict=True)):
        info = part.get("shard", {})
        if (
            shard.rule != index.rule
            or info.get("rank") != rank
            or info.get("world") != world
            or info.get("token") != token
            or info.get("shapes") != first.get("shapes")
            or info.get("dtype") != first.get("dtype")
        ):
            raise CheckpointError(f"{path}: shard {rank} does not belong to this checkpoint")
    try:
        shapes = [tuple(int(n) for n in shape) for shape in parts[0]["shard"]["shapes"]]
        pieces = [part["pieces"] for part in parts]
        state = assemble([part["state"] for part in parts], pieces, shapes)
        params = None
        if all("param_pieces" in part for part in parts):
            values = [{i: {"value": v} for i, v in part["param_pieces"].items()} for part in parts]
            whole = assemble(values, pieces, shapes)
            params = [whole[i]["value"] for i in range(len(shapes))]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: the shards do not fit together: {error}") from error
    first_part = parts[0]
    state_dict = {
        "state": state,
        "param_groups": first_part.get("param_groups"),
        "step_count": first_part.get("step_count"),
        "seed": first_part.get("seed"),
        "attached": {},
    }
    return Checkpoint(index.rule, state_dict, params, shards[0].extra)
