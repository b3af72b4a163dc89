"""Checkpoints that cannot run code and cannot be half-written.

A checkpoint is one zip archive (uncompressed, as ``numpy.savez`` writes) holding
``metadata.json`` and one ``.npy`` member per array:

- **No pickle.** Arrays are read with ``allow_pickle=False`` and everything else is JSON, so
  loading a checkpoint from an untrusted source cannot execute code. Values JSON lacks are
  tagged objects (``{"$tuple": [...]}``, ``{"$float": "nan"}``, ``{"$items": [[key, value],
  ...]}`` for dicts with non-string keys, ``{"$array": i}`` for array ``i``).
- **Atomic.** The archive is written to a temporary file beside the target, flushed and
  ``fsync``-ed, renamed over the target (``os.replace``, atomic on POSIX and Windows) and the
  directory is ``fsync``-ed. A crash or ``SIGKILL`` at any point leaves either the previous
  checkpoint or the new one, never a mix; at worst a ``.<name>.<random>.tmp`` file remains.
- **Checked before use.** The metadata carries a format name and version and, per array, its
  dtype, shape and SHA-256; :func:`load` verifies all of them (and the zip CRCs) and raises
  :class:`CheckpointError` on any mismatch. :meth:`Checkpoint.restore` then checks the rule,
  the parameter shapes and dtypes and the whole state before it changes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastopt._backend import backend_of
from fastopt.optimizer import Optimizer

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "CheckpointError", "load", "save"]

#: The ``format`` entry of every checkpoint's metadata.
FORMAT = "fastopt.checkpoint"
#: The layout version this fastopt writes and reads.
FORMAT_VERSION = 1

_METADATA = "metadata.json"
# A fixed member timestamp: the same state always gives the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)


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
            groups and schedules. Saved hyperparameter values replace the current ones.
        params
            Also copy the saved parameter values into the optimizer's parameters.

        Raises
        ------
        CheckpointError
            If the checkpoint does not fit ``optimizer``; nothing has changed then.
        """
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastopt Optimizer, got {type(optimizer)}")
        if type(optimizer).__name__ != self.rule:
            raise CheckpointError(
                f"the checkpoint holds a {self.rule} optimizer, not a {type(optimizer).__name__}"
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
                f"the checkpoint holds {len(self.params)} parameters, the optimizer has {len(live)}"
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
        if value.dtype.kind not in "biufc":
            raise TypeError(f"{where} has dtype {value.dtype}; a checkpoint stores numbers only")
        arrays.append(np.ascontiguousarray(value))
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
        f"{where} is a {type(value).__name__}, which a checkpoint cannot store (JSON values "
        "and numeric arrays only: no pickle)"
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
    if tag == "$tuple" and isinstance(content, list):
        return tuple(_decode(v, arrays) for v in content)
    if tag == "$float" and content in ("nan", "inf", "-inf"):
        return float(content)
    if tag == "$items" and isinstance(content, list):
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in content):
            raise CheckpointError("malformed metadata: $items must hold [key, value] pairs")
        return {_decode(k, arrays): _decode(v, arrays) for k, v in content}
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
        Also save the parameter values, so that :meth:`Checkpoint.restore` resumes exactly.
    extra
        Anything else to keep (epoch, data order, ...): JSON values, tuples, numeric arrays
        and dicts of them.

    Raises
    ------
    TypeError
        If something to save is neither a JSON value nor a numeric array; nothing is written.

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
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt Optimizer, got {type(optimizer).__name__}")
    arrays: list[np.ndarray] = []
    metadata = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "rule": type(optimizer).__name__,
        "optimizer": _encode(optimizer.state_dict(), "state_dict", arrays),
        "params": _encode(_host_copies(optimizer.params), "params", arrays) if params else None,
        "extra": _encode(extra, "extra", arrays),
    }
    metadata["arrays"] = [
        {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)} for a in arrays
    ]
    text = json.dumps(metadata, allow_nan=False, indent=1)
    _write_atomically(os.fspath(path), text, arrays)


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
def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save`.

    Raises
    ------
    CheckpointError
        If the file is not a fastopt checkpoint, is truncated or corrupted (zip CRC or
        SHA-256 mismatch), has another format version, or its metadata is malformed.
    OSError
        If the file cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:  # a missing or unreadable file is an OSError, as usual
        try:
            with zipfile.ZipFile(file) as archive:
                metadata = _read_metadata(archive, path)
                arrays = [
                    _read_array(archive, f"arrays/{number}.npy", entry)
                    for number, entry in enumerate(metadata["arrays"])
                ]
        # What zipfile raises on damaged structures: bad CRCs and magic numbers, offsets past
        # the end (EOFError, OSError), flipped "compression method" or "encrypted" fields.
        except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as error:
            raise CheckpointError(
                f"{path} is not a fastopt checkpoint, or is truncated or corrupted: {error!r}"
            ) from error
    return _checkpoint(metadata, arrays)


def _read_metadata(archive: zipfile.ZipFile, path: str) -> dict[str, Any]:
    try:
        raw = archive.read(_METADATA)
    except KeyError:
        raise CheckpointError(f"{path} has no {_METADATA}: not a fastopt checkpoint") from None
    try:
        metadata = json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
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
    return metadata


def _reject_constant(name: str) -> None:
    raise CheckpointError(f"malformed metadata: {name} is not JSON")


def _read_array(archive: zipfile.ZipFile, name: str, entry: Mapping[str, Any]) -> np.ndarray:
    try:
        with archive.open(name) as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
    except KeyError:
        raise CheckpointError(f"the checkpoint lacks {name}: it is incomplete") from None
    except ValueError as error:  # bad .npy header, object dtype, short data
        raise CheckpointError(f"{name} is not a valid array: {error}") from error
    if array.dtype.str != entry["dtype"] or list(array.shape) != entry["shape"]:
        raise CheckpointError(
            f"{name} is {array.dtype.str} {list(array.shape)}, its metadata says "
            f"{entry['dtype']} {entry['shape']}"
        )
    if _sha256(array) != entry["sha256"]:
        raise CheckpointError(f"{name} fails its SHA-256 check: the checkpoint is corrupted")
    return array


def _checkpoint(metadata: Mapping[str, Any], arrays: list[np.ndarray]) -> Checkpoint:
    rule = metadata["rule"]
    state_dict = _decode(metadata["optimizer"], arrays)
    params = _decode(metadata.get("params"), arrays)
    if not isinstance(rule, str) or not isinstance(state_dict, dict):
        raise CheckpointError("malformed metadata: 'rule' or 'optimizer'")
    if params is not None and not (
        isinstance(params, list) and all(isinstance(p, np.ndarray) for p in params)
    ):
        raise CheckpointError("malformed metadata: 'params' must be a list of arrays")
    return Checkpoint(rule, state_dict, params, _decode(metadata.get("extra"), arrays))
