"""Exported ONNX files, cached on disk so a node's second start skips the export.

A file is reused only when the key stored in its own metadata equals the key
of the model being started (weights hash, family and options, input size,
dynamic or static batch, opset, exporter code); anything else — a different
model, a truncated file, a file from an older seg_ros — is exported again.
Files are written atomically. A random-initialised model is exported to a
temporary folder removed at exit: its parameters differ on every start, so a
cached copy could never be reused.
The cache folder is bounded (``SEG_ROS_ONNX_CACHE_MB``, default 1024 MiB):
the least recently used files go first, each eviction logged.
Also the TensorRT-side preparation: the exported graph must have an N×3×H×W
input (N symbolic, or 1), the head's outputs and only operators TensorRT's
parser knows.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from seg_ros.backends.base import INPUT_NAME, OUTPUT_NAMES, BackendError

LOG = logging.getLogger(__name__)

METADATA_KEY = "seg_ros.export_key"
# Bump when the exported graph changes in a way the code fingerprint cannot see.
EXPORT_FORMAT = 1
CACHE_LIMIT_ENV = "SEG_ROS_ONNX_CACHE_MB"
DEFAULT_CACHE_LIMIT_MB = 1024
_scratch: Path | None = None  # this process's folder for exports that are not worth caching


def atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def normalised(key: dict) -> dict:
    """Return the key as it reads back from JSON, so stored and fresh keys compare equal."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def weights_fingerprint(loaded) -> str:
    """Hash the weights: the checkpoint's sha256, or (random init) the parameters in memory."""
    if loaded.spec.weights_sha256:
        return f"sha256:{loaded.spec.weights_sha256}"
    import torch

    hasher = hashlib.sha256()
    for name, tensor in sorted(loaded.module.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(str(tensor.dtype).encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    return f"parameters-sha256:{hasher.hexdigest()}"


def _code_fingerprint() -> str:
    """Hash of the exporter and network sources, so a code change never reuses an old graph."""
    package = Path(__file__).resolve().parent.parent
    hasher = hashlib.sha256()
    for path in [package / "export.py", *sorted((package / "models").glob("*.py"))]:
        if path.is_file():
            hasher.update(path.name.encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]


def model_key(loaded) -> dict:
    """Return what identifies the network itself, independent of input size and backend."""
    spec = loaded.spec
    return {
        "name": spec.name,
        "family": spec.family,
        "options": {str(k): spec.options[k] for k in sorted(spec.options)},
        "num_classes": int(spec.num_classes),
        "weights": weights_fingerprint(loaded),
    }


def export_key(
    loaded,
    height: int,
    width: int,
    *,
    head: bool = True,
    opset: int = 0,
    dynamic_batch: bool = True,
) -> dict:
    """Return what an exported graph depends on; ``opset`` 0 = the exporter's default."""
    import torch

    from seg_ros.export import DEFAULT_OPSET

    from seg_ros import __version__

    return normalised(
        {
            "format": EXPORT_FORMAT,
            "model": model_key(loaded),
            "height": int(height),
            "width": int(width),
            "head": bool(head),
            "dynamic_batch": bool(dynamic_batch),
            "opset": int(opset or DEFAULT_OPSET),
            "seg_ros": __version__,
            "code": _code_fingerprint(),
            "torch": torch.__version__,
        }
    )


def onnx_cache_dir() -> Path:
    from seg_ros.paths import cache_dir

    return cache_dir() / "onnx"


def read_cache_key(path: Path) -> dict | None:
    """Return the key stored in a cached file's metadata; None when unreadable or absent."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # truncated or not an ONNX file at all
        LOG.warning("ignoring unreadable cached ONNX file %s (%s)", path, exc)
        return None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return None
    return None


def store_cache_key(path: Path, key: dict) -> None:
    """Write ``key`` into the ONNX file's metadata (before it is renamed into the cache)."""
    import onnx

    model = onnx.load(str(path))
    # A graph made from a cached one (the QDQ graph from the fp32 export) inherits its key: keep
    # one entry, or onnx.checker refuses the file for duplicate metadata keys.
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(key, sort_keys=True)
    onnx.save(model, str(path))


def reusable(loaded) -> bool:
    """Whether an export of ``loaded`` can ever be reused: only for weights loaded from a file."""
    return bool(loaded.spec.weights_sha256)


def scratch_dir() -> Path:
    """Return this process's folder for exports that cannot be reused (removed at exit)."""
    global _scratch
    if _scratch is None or not _scratch.is_dir():
        _scratch = Path(tempfile.mkdtemp(prefix="seg_ros-onnx-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def cache_limit_bytes() -> int:
    """Return the cache folder's size cap from SEG_ROS_ONNX_CACHE_MB (0 = no cap)."""
    text = os.environ.get(CACHE_LIMIT_ENV, "")
    try:
        megabytes = float(text) if text else DEFAULT_CACHE_LIMIT_MB
    except ValueError:
        LOG.warning(
            "%s=%r is not a number; using %d", CACHE_LIMIT_ENV, text, DEFAULT_CACHE_LIMIT_MB
        )
        megabytes = DEFAULT_CACHE_LIMIT_MB
    return max(int(megabytes * (1 << 20)), 0)


def enforce_cache_limit(
    folder: Path, *, keep: tuple[Path, ...] = (), limit: int | None = None
) -> list[Path]:
    """Delete the least recently used .onnx files until ``folder`` fits the cap; the deleted paths.

    ``keep`` (the files the caller is about to use) are never deleted, even
    when they alone exceed the cap.
    """
    limit = cache_limit_bytes() if limit is None else int(limit)
    if limit <= 0 or not Path(folder).is_dir():
        return []
    keep_set = {Path(p).resolve() for p in keep}
    files = []
    for path in Path(folder).glob("*.onnx"):
        try:
            stat = path.stat()
        except OSError:  # removed by another process meanwhile
            continue
        files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    removed = []
    for _, size, path in sorted(files):
        if total <= limit:
            break
        if path.resolve() in keep_set:
            continue
        try:
            path.unlink()
        except OSError as exc:
            LOG.warning("could not evict %s from the ONNX cache: %s", path, exc)
            continue
        total -= size
        removed.append(path)
        LOG.info(
            "ONNX cache over %d MiB: evicted %s (%.1f MiB, least recently used)",
            limit >> 20,
            path.name,
            size / (1 << 20),
        )
    return removed


def cached_onnx(
    loaded,
    height: int,
    width: int,
    *,
    head: bool = True,
    opset: int = 0,
    dynamic_batch: bool = True,
    cache_root: Path | None = None,
) -> Path:
    """Return an ONNX file for ``loaded`` at height×width, exported unless a matching one exists.

    The batch is symbolic unless ``dynamic_batch`` is False (then 1).
    Random-initialised models go to ``scratch_dir()`` instead of the cache.
    """
    key = export_key(loaded, height, width, head=head, opset=opset, dynamic_batch=dynamic_batch)
    cache = reusable(loaded)
    if cache:
        folder = Path(cache_root) if cache_root else onnx_cache_dir()
    else:
        folder = scratch_dir()
    kind = "head" if head else "logits"
    name = f"{safe_name(loaded.spec.name)}-{height}x{width}-{kind}-{digest(key)[:16]}.onnx"
    path = folder / name
    if path.is_file():
        stored = read_cache_key(path)
        if stored == key:
            LOG.debug("reusing exported %s", path)
            os.utime(path)  # recently used: evicted last
            return path
        LOG.info("re-exporting %s: the cached file does not match this model", path)

    from seg_ros.export import export_onnx

    def write(tmp: Path) -> None:
        LOG.info(
            "exporting %s to ONNX at %dx%d%s",
            loaded.spec.name,
            width,
            height,
            " (cached for the next start)" if cache else " (random weights: not cached)",
        )
        export_onnx(
            loaded.module,
            tmp,
            height,
            width,
            head=head,
            opset=key["opset"],
            dynamic_batch=dynamic_batch,
        )
        store_cache_key(tmp, key)

    atomic_write(path, write)
    if cache:
        enforce_cache_limit(folder, keep=(path,))
    return path


def check_onnx_for_tensorrt(path: Path, height: int, width: int) -> None:
    """Fail with the reason when TensorRT's parser would reject the graph or its I/O is wrong."""
    import onnx

    from seg_ros.export import unsupported_tensorrt_ops

    model = onnx.load(str(path), load_external_data=False)
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if [i.name for i in inputs] != [INPUT_NAME]:
        raise BackendError(
            f"{path}: expected one input named {INPUT_NAME!r}, found {[i.name for i in inputs]}"
        )
    dims = [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    symbolic_batch = bool(dims) and isinstance(dims[0], str) and bool(dims[0])
    if dims[1:] != [3, height, width] or not (symbolic_batch or dims[0] == 1):
        raise BackendError(
            f"{path}: input {INPUT_NAME!r} must be [batch, 3, {height}, {width}] with a symbolic "
            f"batch (or 1), got {dims}"
        )
    outputs = [o.name for o in model.graph.output]
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        raise BackendError(
            f"{path}: expected outputs {list(OUTPUT_NAMES)} (export with head=True), got {outputs}"
        )
    unsupported = unsupported_tensorrt_ops(path)
    if unsupported:
        raise BackendError(
            f"{path}: TensorRT's ONNX parser does not support {sorted(set(unsupported))}"
        )


def prepare_onnx_for_tensorrt(
    loaded, height: int, width: int, *, opset: int = 0, cache_root: Path | None = None
) -> Path:
    """Export (or reuse) the head graph and check that TensorRT can parse it."""
    path = cached_onnx(loaded, height, width, head=True, opset=opset, cache_root=cache_root)
    check_onnx_for_tensorrt(path, height, width)
    return path
