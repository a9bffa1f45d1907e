"""Read a W&B run's local transaction log (`run-<id>.wandb`): the history rows it holds, offline or online.

W&B writes every record of a run to this file before (or instead of, offline) sending it; `wandb sync`
uploads it. The file is a LevelDB-style log (a 7-byte `:W&B` header, then 32 KiB blocks of chunks with a
7-byte header: CRC-32 of type+data, length, type FULL/FIRST/MIDDLE/LAST) of wandb's own `Record` protobuf
messages. wandb 0.2x dropped its Python reader of this format (`wandb.sdk.internal.datastore`); this module
reads the same format with wandb's protobuf definitions. esft uses it to find the steps a resumed W&B run
already holds; the tests use it to read back what was logged.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_IDENT, _MAGIC = b":W&B", 0xBEE1
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != _IDENT or magic != _MAGIC:
        raise ValueError("not a W&B transaction log")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _CHUNK_HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # the block's tail is zero padding
            pos += room
            continue
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        start = pos + _CHUNK_HEADER.size
        chunk = data[start:start + length]
        if kind == 0 or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            return  # a torn tail (the writer was killed mid-record): everything before it is valid
        pos = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def records(path: Path) -> Iterator[Any]:
    """Every `Record` protobuf message of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Each history row of a .wandb file as {key: value}, `_step` included (nested keys joined by '/')."""
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = _items(record.history.item)
        if record.history.HasField("step"):
            row.setdefault("_step", record.history.step.num)
        yield row


def run_summary(path: Path) -> dict[str, Any]:
    """The run's group, name, config (last value of each key) and summary as recorded in a .wandb file."""
    info: dict[str, Any] = {"group": None, "name": None, "config": {}, "summary": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info["group"], info["name"] = record.run.run_group, record.run.display_name
            info["config"].update(_items(record.run.config.update))
        elif kind == "config":
            info["config"].update(_items(record.config.update))
        elif kind == "summary":
            info["summary"].update(_items(record.summary.update))
    return info


def is_complete(path: Path) -> bool:
    """Whether a session's log holds its `exit` record, the last one `run.finish()` has written."""
    try:
        return any(record.WhichOneof("record_type") == "exit" for record in records(path))
    except (OSError, ValueError):
        return False


def wait_until_written(wandb_dir: Path, run_id: str, timeout_s: float) -> bool:
    """Wait until the newest session of `run_id` is complete on disk: wandb's service writes the log after
    `run.finish()` has returned. False if it is not within `timeout_s` (the data may still arrive later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sessions = run_files(wandb_dir, run_id)
        if sessions and is_complete(sessions[-1]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The transaction logs of run `run_id` under a `wandb/` dir: one per session (a resume adds one)."""
    return sorted(Path(wandb_dir).glob(f"*-{run_id}/run-{run_id}.wandb"))
