"""Atomic file writes: a file the package writes is either complete or absent.

A run killed mid-write (SIGKILL on a preemptible queue) must never leave a
half-written file that the rerun trusts. Every writer therefore writes a
temporary sibling and renames it over the target: `os.replace` is atomic on
POSIX and Windows within one file system, so readers see the old file or the
new one, never a mixture.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(folder / "done.json", {"steps": 10})
    >>> (folder / "done.json").read_text()
    '{\\n  "steps": 10\\n}'
    >>> with replacing(folder / "table.txt") as temporary:
    ...     _ = temporary.write_text("k  P(k)")
    >>> sorted(p.name for p in folder.iterdir())
    ['done.json', 'table.txt']
"""

import contextlib
import json
import os
import pathlib
import shutil


def temporary_sibling(path):
    """A hidden name beside `path` that keeps its suffixes (writers infer formats from them).

    Args:
        path: the final path.

    Returns:
        `pathlib.Path` of the temporary file, unique to this process: e.g.
        `.latest.partial-123.weights.h5` for `latest.weights.h5`.
    """
    path = pathlib.Path(path)
    suffixes = "".join(path.suffixes)
    base = path.name[: len(path.name) - len(suffixes)]
    return path.with_name(f".{base}.partial-{os.getpid()}{suffixes}")


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path to write; on success it replaces `path` atomically.

    On an exception the temporary file (or folder) is removed and `path` is
    left as it was. Folders work too: an existing folder at `path` is removed
    just before the rename, so a kill leaves either the old folder, the new
    one, or none (which a rerun rebuilds), never a partial one.

    Args:
        path: the final file or folder.

    Yields:
        The temporary path, in the same folder as `path`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    # Leftovers of writers killed mid-write (other processes): never trusted, cleared here.
    for stale in path.parent.glob(temporary.name.replace(f"-{os.getpid()}", "-*")):
        _remove(stale)
    try:
        yield temporary
        if temporary.is_dir():
            _remove(path)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically.

    Args:
        path: destination file.
        text: the whole content.
    """
    with replacing(path) as temporary:
        temporary.write_text(text)


def write_json(path, value, indent=2):
    """Writes `value` as JSON to `path` atomically.

    Args:
        path: destination file.
        value: a JSON-serialisable value.
        indent: JSON indentation.
    """
    write_text(path, json.dumps(value, indent=indent))


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
