"""The one I/O layer: atomic writes of tables, JSON, text and checkpoints; data fingerprints.

Every file seqrec writes goes through here: it is written to a temporary file beside
its destination and renamed into place, so a crash never leaves a partial file that a
later run could mistake for a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # annotations only
    from seqrec.sequences import SessionDataset


class OutputError(OSError):
    """An output could not be written; the message names the path and the cause."""


def current_umask() -> int:
    """Return the process umask, read from /proc where possible (``os.umask`` must set it to read it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # fallback: briefly set, then restore
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` if the block succeeds.

    ``mkstemp`` creates the file 0600; it gets the usual mode (0666 less the umask, so 0644)
    before the rename, like a file opened in place.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except FileExistsError as err:  # mkdir: the parent path is a file
        raise OutputError(f"cannot write {dest}: {err.filename} exists and is not a directory") from err
    except OSError as err:
        raise OutputError(f"cannot write {dest}: {err.strerror or err}") from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, dest)
    except OSError as err:
        raise OutputError(f"cannot write {dest}: {err.strerror or err}") from err
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a new empty folder beside ``dest``; put it in ``dest``'s place (a file or folder there is removed) if the
    block succeeds, else remove it. Readers see the old output or the whole new one, never a part of it."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as err:
        raise OutputError(f"cannot write {dest}: {err.strerror or err}") from err
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
        if dest.exists() or dest.is_symlink():
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {dest}: {err.strerror or err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_table(table: pa.Table | pd.DataFrame, dest: Path | str, **kwargs: Any) -> Path:
    """Write a parquet file atomically; return its path."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(dest)


def read_table(path: Path | str, columns: list[str] | None = None, categorical: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file (or directory of files) into pandas; ``categorical`` columns come as pandas categoricals."""
    return pq.read_table(path, columns=columns, read_dictionary=categorical).to_pandas()


def write_text(text: str, dest: Path | str) -> Path:
    """Write a text file atomically; return its path."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def write_bytes(data: bytes, dest: Path | str) -> Path:
    """Write a binary file atomically; return its path."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_figure(fig, dest: Path | str, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically, close it, and return its path."""
    import matplotlib.pyplot as plt

    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(dest)


def write_array(values: Any, dest: Path | str) -> Path:
    """Write a numeric array as ``.npy`` atomically (no pickle); return its path."""
    import numpy as np

    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(values), allow_pickle=False)
    return Path(dest)


def read_array(path: Path | str) -> Any:
    """Return an array written by ``write_array`` (refusing pickled objects)."""
    import numpy as np

    return np.load(Path(path), allow_pickle=False)


def write_json(obj: Any, dest: Path | str) -> Path:
    """Write JSON atomically (sorted keys, indented); return its path."""
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", dest)


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_checkpoint(state: dict[str, Any], dest: Path | str) -> Path:
    """Save a torch checkpoint atomically (tensors, arrays as lists, primitives only)."""
    import torch

    with atomic_path(dest) as tmp:
        torch.save(state, tmp)
    return Path(dest)


def load_checkpoint(path: Path | str, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no arbitrary pickle)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


def fingerprint_files(paths: list[Path] | list[str], content: bool = False) -> str:
    """Return a hash of file names, sizes and mtimes (or full contents with ``content``)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        if content:
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def fingerprint_tree(root: Path | str, pattern: str = "**/*.pq", content: bool = False) -> str:
    """Return a fingerprint of every file under ``root`` matching ``pattern``."""
    return fingerprint_files(sorted(Path(root).glob(pattern)), content=content)


def fingerprint_obj(obj: Any) -> str:
    """Return a stable hash of a JSON-able object (configs, parameter dicts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_sessions(ds: "SessionDataset", dest: Path | str) -> Path:
    """Save a SessionDataset (with its vocabulary) as one .npz file, atomically, no pickle."""
    import numpy as np

    arrays = {
        "vocab": np.asarray(ds.vocab.ids, dtype=str),
        "offsets": ds.offsets,
        "items": ds.items,
        "times": ds.times,
        "session_keys": np.asarray(ds.session_keys).astype(str),
    }
    if ds.actions is not None:
        arrays["actions"] = np.asarray(ds.actions, dtype=str)
    arrays.update({f"label_{k}": np.asarray(v, dtype=str) for k, v in ds.event_labels.items()})
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(dest)


def load_sessions(path: Path | str) -> "SessionDataset":
    """Load a SessionDataset written by ``save_sessions`` (``allow_pickle=False``)."""
    import numpy as np

    from seqrec.sequences import ItemVocab, SessionDataset

    with np.load(path, allow_pickle=False) as z:
        actions = z["actions"].astype(object) if "actions" in z else None
        labels = {k.removeprefix("label_"): z[k] for k in z.files if k.startswith("label_")}
        return SessionDataset(
            ItemVocab(z["vocab"].astype(object)), z["offsets"], z["items"], z["times"],
            z["session_keys"].astype(object), actions, labels,
        )
