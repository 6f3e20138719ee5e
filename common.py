"""Small helpers every stage shares: user errors, atomic files, configs, seeds.

Nothing here knows about music or models; it is the plumbing that makes each
script safe to kill and re-run (temp file, then rename) and that turns a user's
mistake into one clear line instead of a traceback.
"""
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile

import numpy as np


class UserError(Exception):
    """A problem with the user's input or environment: printed as one line, exit code 2."""


def fail(path, message, line=None, column=None):
    """Raise a UserError that names the file, and the line / column when known."""
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if column is not None:
        where += f", column '{column}'"
    raise UserError(f"{where}: {message}")


def run_main(main):
    """Call main(); print user errors and disk errors as one line, never a traceback."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: disk full while writing {e.filename or 'output'}; "
                  "nothing was half-written, free space and run again", file=sys.stderr)
        elif e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            print(f"error: cannot write {e.filename or 'output'}: {e.strerror}", file=sys.stderr)
        elif e.errno == errno.ENOENT:
            print(f"error: {e.filename}: no such file or folder", file=sys.stderr)
        elif e.errno == errno.ENOTDIR:
            print(f"error: cannot write {e.filename}: a file stands where a folder is needed", file=sys.stderr)
        else:
            raise
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A killed process leaves at most a stray `.tmp` file, never a truncated artifact.
    """
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; artifacts get normal permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """open() that writes to a temp file and renames it into place on success."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_json(path, obj):
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def read_json(path, what="JSON file"):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found (did the previous stage run?)") from None
    except json.JSONDecodeError as e:
        fail(path, f"not valid JSON ({e.msg})", line=e.lineno)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def save_config(out_dir, args, name="config.json", **extra):
    """Write the resolved options of a stage beside its outputs."""
    cfg = dict(vars(args)) if not isinstance(args, dict) else dict(args)
    cfg.update(extra)
    write_json(os.path.join(out_dir, name), cfg)
    return cfg


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def file_sha256(path):
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time: the fingerprint later stages check inputs against."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def need_file(path, what):
    """Stop before doing any work if an input is missing."""
    if not os.path.exists(path):
        raise UserError(f"{path}: {what} not found (did the previous stage run?)")
    return path


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder; swap it in for `path` only if the block succeeds.

    A kill at any moment leaves either the old folder or the new one (or, for an
    instant, none: a re-run then redoes the stage), never a mix of the two.
    """
    path = os.path.abspath(str(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def jsonl(record):
    """One line of a .jsonl file: the record as JSON, non-ASCII characters kept as they are."""
    return json.dumps(record, ensure_ascii=False) + "\n"
