"""TensorRT engines on disk, keyed by everything that makes them valid; no TensorRT needed here.

An engine only runs on the TensorRT version and GPU it was built for (name,
compute capability, and the multiprocessor count and memory that tell Jetson
modules of one capability apart: an AGX Orin engine must not run on an Orin
NX), and is only right for the network, weights, input shape, precision, how
that precision was built (strongly or weakly typed), calibration, DLA core
and the largest batch of its optimisation profile. Each file carries that
key, the I/O shapes and the payload's sha256 in a small JSON header ahead of
the serialized engine::

    MAGIC | uint32 little-endian header length | header JSON | engine bytes

so a truncated, corrupted, foreign or stale file is recognised before
TensorRT ever sees it, and rebuilt (the log says which field changed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

from seg_ros.backends.base import BackendError, head_io
from seg_ros.backends.devices import GpuIdentity
from seg_ros.backends.onnx_cache import atomic_write, digest, normalised, safe_name

LOG = logging.getLogger(__name__)

MAGIC = b"SEG_ROS-TRT-ENGINE\n"
FORMAT = 3  # 2: GPU multiprocessors and memory, typing; 3: dynamic batch, max_batch
_MAX_HEADER = 1 << 20


class EngineFileError(ValueError):
    """A cached engine file that must not be loaded (truncated, corrupt, foreign or stale)."""


def engine_key(
    export_key: dict,
    *,
    precision: str,
    typing: str,
    calibration: str,
    tensorrt_version: str,
    gpu: GpuIdentity,
    dla_core: int,
    max_batch: int,
) -> dict:
    """Return the key an engine is valid for; ``export_key`` pins network, weights and shape.

    ``typing`` is "strong" (built from a graph that carries its precision) or
    "weak" (fp32 graph + builder flags); ``calibration`` identifies the INT8
    ranges and only counts for int8; ``max_batch`` is the largest batch the
    engine's optimisation profile takes.
    """
    return normalised(
        {
            "format": FORMAT,
            "network": export_key,
            "precision": precision,
            "typing": typing,
            "calibration": calibration if precision == "int8" else "",
            "tensorrt": tensorrt_version,
            "gpu": {
                "name": gpu.name,
                "compute_capability": gpu.compute_capability,
                "multiprocessors": int(gpu.multiprocessors),
                "memory_gib": int(gpu.memory_gib),
            },
            "dla_core": int(dla_core),
            "max_batch": int(max_batch),
        }
    )


def engine_io(num_classes: int, height: int, width: int) -> dict:
    """Name -> {shape, dtype} the engine must expose: the exported head's, batch dynamic (-1)."""
    return normalised(
        {
            name: {"shape": list(shape), "dtype": dtype}
            for name, (shape, dtype) in head_io(num_classes, height, width, batch=-1).items()
        }
    )


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def describe_difference(stored: dict, expected: dict, limit: int = 4) -> str:
    """'tensorrt: 10.3.0 -> 10.7.0, precision: fp32 -> fp16' for the fields that differ."""
    old, new = _flatten(stored), _flatten(expected)
    changes = [
        f"{name}: {old.get(name, '(none)')} -> {new.get(name, '(none)')}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def write_engine(path: Path, payload: bytes, key: dict, io: dict, **info) -> None:
    """Write header + payload atomically; ``info`` (build time, ...) is stored for humans."""
    payload = bytes(payload)
    header = json.dumps(
        {
            "key": key,
            "key_sha256": digest(key),
            "io": io,
            "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "info": info,
        },
        sort_keys=True,
    ).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC)
            handle.write(struct.pack("<I", len(header)))
            handle.write(header)
            handle.write(payload)

    atomic_write(Path(path), write)


def read_header(path: Path) -> tuple[dict, int]:
    """Read an engine file's header and its payload offset; EngineFileError if it is not one."""
    with open(path, "rb") as handle:
        magic = handle.read(len(MAGIC))
        if magic != MAGIC:
            raise EngineFileError(f"{path} is not a seg_ros engine file (no header)")
        raw_length = handle.read(4)
        if len(raw_length) < 4:
            raise EngineFileError(f"{path} is truncated (header length missing)")
        (length,) = struct.unpack("<I", raw_length)
        if length > _MAX_HEADER:
            raise EngineFileError(f"{path} has an implausible header length {length}")
        raw = handle.read(length)
    if len(raw) < length:
        raise EngineFileError(f"{path} is truncated (header cut short)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineFileError(f"{path} has a damaged header ({exc})") from exc
    if not isinstance(header, dict) or not {"key", "io", "payload_size", "payload_sha256"} <= set(
        header
    ):
        raise EngineFileError(f"{path} has an incomplete header")
    return header, len(MAGIC) + 4 + length


def read_engine(path: Path, key: dict, io: dict) -> bytes:
    """Return the serialized engine in ``path`` if it was built for ``key`` with I/O ``io``.

    FileNotFoundError when there is no file; EngineFileError (with the reason)
    when it is truncated, corrupt, foreign or was built for something else.
    """
    path = Path(path)
    header, offset = read_header(path)
    if header["key"] != key:
        raise EngineFileError(
            f"{path} was built for another configuration "
            f"({describe_difference(header['key'], key)})"
        )
    if header["io"] != io:
        raise EngineFileError(
            f"{path} has other input/output shapes ({describe_difference(header['io'], io)})"
        )
    payload = path.read_bytes()[offset:]
    if len(payload) != header["payload_size"]:
        raise EngineFileError(
            f"{path} is truncated ({len(payload)} of {header['payload_size']} engine bytes)"
        )
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise EngineFileError(f"{path} is corrupt (engine checksum mismatch)")
    return payload


class EngineCache:
    """A folder of engines, plus the timing and calibration caches that speed up rebuilds."""

    def __init__(self, folder: str | Path = ""):
        if folder:
            self.folder = Path(folder).expanduser()
        else:
            from seg_ros.paths import cache_dir

            self.folder = cache_dir() / "engines"

    def engine_path(
        self,
        model_name: str,
        height: int,
        width: int,
        precision: str,
        dla_core: int = -1,
        max_batch: int = 1,
    ) -> Path:
        """Name one file per model, size, precision, DLA core and max batch; the header says more.

        Nodes with different numbers of cameras so keep their own engines instead of rebuilding
        each other's.
        """
        dla = f"-dla{dla_core}" if dla_core >= 0 else ""
        batch = f"-b{max_batch}" if max_batch > 1 else ""
        stem = f"{safe_name(model_name)}-{height}x{width}-{precision}{dla}{batch}"
        return self.folder / f"{stem}.engine"

    def timing_cache_path(self, tensorrt_version: str, gpu: GpuIdentity) -> Path:
        """Tactic timings are per TensorRT version and GPU, shared by every model built there."""
        tag = safe_name(
            f"trt{tensorrt_version}-{gpu.name}-sm{gpu.compute_capability}-"
            f"{gpu.multiprocessors}mp-{gpu.memory_gib}gib"
        )
        return self.folder / f"timing-{tag}.cache"

    def calibration_cache_path(
        self, model_name: str, height: int, width: int, calibration_key: dict
    ) -> Path:
        return (
            self.folder
            / f"{safe_name(model_name)}-{height}x{width}-int8-{digest(calibration_key)[:16]}.calib"
        )

    def load_or_build(
        self, path: Path, key: dict, io: dict, build: Callable[[], bytes], *, force: bool = False
    ) -> tuple[bytes, bool]:
        """Return (engine bytes, built now): the cached file if valid, else ``build()``, stored."""
        if not force:
            try:
                payload = read_engine(path, key, io)
            except FileNotFoundError:
                LOG.info("no cached engine at %s: building one", path)
            except EngineFileError as exc:
                LOG.warning("not using the cached engine: %s; rebuilding", exc)
            else:
                LOG.info("using cached engine %s", path)
                return payload, False
        started = time.monotonic()
        payload = build()
        if not payload:
            raise BackendError(f"building {path.name} produced no engine")
        seconds = time.monotonic() - started
        write_engine(
            path,
            payload,
            key,
            io,
            build_seconds=round(seconds, 1),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        LOG.info("built %s in %.0f s (%.1f MB)", path, seconds, len(payload) / 1e6)
        return bytes(payload), True
