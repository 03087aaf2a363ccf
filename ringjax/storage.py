"""Where a run's files live: a local (or mounted) folder, or a Cloud Storage folder `gs://bucket/prefix`.

Everything ringjax reads or writes in a run folder goes through `etils.epath`, the path layer Orbax itself uses
(gcsfs underneath for `gs://`; Orbax writes the arrays with tensorstore). Object stores have no append and no
rename, so the writes here are whole objects:
- `write_json` / `write_bytes`: a local file is written beside its target and renamed over it; an object is one
  upload, which Cloud Storage makes visible all at once (readers see the old object or the new one).
- Metrics logs are rewritten whole on an object store (`ringjax.trainer.metrics`).
- Checkpoints: Orbax renames a temporary folder on a filesystem; on Cloud Storage it marks a finished step with a
  `commit_success.txt` file, and a step without it is not listed (`ringjax.trainer.checkpoint.checkpoint_steps`).
- Files a library can only write to a local folder (the HF export, a tokenizer) are written to a temporary folder
  and uploaded (`staged`); SGLang servers start from a local export in any case.

Credentials are Google's application-default ones (`gcloud auth application-default login`, a service account
in GOOGLE_APPLICATION_CREDENTIALS, or the VM's own on a TPU pod). `check_writable` proves them before any compute.
Tests run against a local Cloud Storage emulator: STORAGE_EMULATOR_HOST (gcsfs) and TENSORSTORE_GCS_HTTP_URL
(tensorstore) point both at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from etils import epath

SCHEMES = ("gs",)  # object stores a run folder may live in
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> str | None:
    """The URL scheme of `path` ("gs" for gs://...), None for a local path."""
    m = _URL.match(str(path))
    return m.group(1).lower() if m else None


def is_url(path: str) -> bool:
    return scheme(path) is not None


def resolve(path: str, key: str) -> str:
    """`path` made absolute (`~` and relative to the current folder allowed); a `gs://bucket/prefix` URL kept as
    typed less a trailing '/'. Any other URL scheme: ValueError naming `key`."""
    kind = scheme(path)
    if kind is None:
        return os.path.abspath(os.path.expanduser(path))
    if kind not in SCHEMES or not re.match(r"^gs://[a-z0-9][a-z0-9._-]*[a-z0-9](/|$)", path):
        raise ValueError(f"{key}={path!r}: not a supported location; give a local or mounted folder, or a Cloud "
                         f"Storage folder gs://BUCKET/PREFIX (other object stores: mount the bucket, e.g. s3fs)")
    return path.rstrip("/") if path.count("/") > 2 else path


def path(p: str) -> epath.Path:
    """`p` as an epath.Path (gcsfs under gs://, the local filesystem otherwise)."""
    if is_url(p):
        _configure_gcsfs()
    return epath.Path(p)


def join(*parts: str) -> str:
    return os.path.join(*parts)  # gs://bucket/a + b = gs://bucket/a/b, as for a folder


def relative(p: str, root: str) -> str:
    """`p` relative to `root` (both local paths or both URLs of one store)."""
    if is_url(root):
        prefix = root.rstrip("/") + "/"
        if not p.startswith(prefix):
            raise ValueError(f"{p} is not inside {root}")
        return p[len(prefix):]
    return os.path.relpath(p, root)


def is_file(p: str) -> bool:
    return path(p).is_file()


def is_dir(p: str) -> bool:
    return path(p).is_dir()


def listdir(p: str) -> list[str]:
    """Names in folder `p`; [] when it does not exist (an object-store folder exists while it holds objects)."""
    folder = path(p)
    return sorted(c.name for c in folder.iterdir()) if folder.is_dir() else []


def read_text(p: str) -> str:
    return path(p).read_text()


def read_json(p: str) -> Any:
    return json.loads(read_text(p))


def write_bytes(p: str, data: bytes) -> None:
    """Writes `p` whole: readers see the previous content or the new one, never a part."""
    if is_url(p):
        path(p).write_bytes(data)  # one upload: a Cloud Storage object appears whole
        return
    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    tmp = f"{p}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)


def write_json(p: str, value: Any) -> None:
    write_bytes(p, (json.dumps(value, indent=2, default=str) + "\n").encode())


def makedirs(p: str) -> None:
    """Creates folder `p` (an object store has no folders: nothing to do there)."""
    if not is_url(p):
        os.makedirs(p, exist_ok=True)


def rmtree(p: str) -> None:
    if path(p).exists():
        path(p).rmtree()


@contextlib.contextmanager
def staged(dest: str, upload: bool = True) -> Iterator[str]:
    """A local folder to write `dest`'s files into: `dest` itself when local; for a URL a temporary folder whose
    files are uploaded to `dest` (replacing what was there) when the block ends without an error, if `upload`
    (the other processes of a multi-process run write nothing there)."""
    if not is_url(dest):
        yield dest
        return
    with tempfile.TemporaryDirectory(prefix="ringjax_upload_") as tmp:
        yield tmp
        if not upload:
            return
        rmtree(dest)
        for root, _, files in os.walk(tmp):
            for name in files:
                local = os.path.join(root, name)  # one file in memory at a time (an export shard: ~2 GB)
                path(join(dest, os.path.relpath(local, tmp))).write_bytes(epath.Path(local).read_bytes())


@contextlib.contextmanager
def local_copy(src: str) -> Iterator[str]:
    """Folder `src` as a local folder: itself, or for a URL a temporary download of its files (not recursive)."""
    if not is_url(src):
        yield src
        return
    with tempfile.TemporaryDirectory(prefix="ringjax_download_") as tmp:
        for name in listdir(src):
            if path(join(src, name)).is_file():
                epath.Path(tmp, name).write_bytes(path(join(src, name)).read_bytes())
        yield tmp


def check_writable(folder: str, key: str) -> None:
    """For an object-store `folder`: writes, reads back and deletes a small probe object, so that missing
    credentials, a missing bucket or a refused write fail before any compute, naming `key` and the URL. A local
    folder is left to the filesystem's own errors."""
    if not is_url(folder):
        return
    try:
        import gcsfs  # noqa: F401  (epath's gs:// backend)
    except ImportError:
        raise ValueError(f"{key}={folder!r}: gs:// run folders need gcsfs (pip install gcsfs)") from None
    probe = join(folder, f".ringjax-probe-{uuid.uuid4().hex}")
    try:
        path(probe).write_text("ringjax")
        if path(probe).read_text() != "ringjax":
            raise OSError("the probe object read back different content")
        path(probe).unlink()
    except Exception as e:  # noqa: BLE001 - any failure here is the store refusing us; it is reported, not hidden
        raise ValueError(f"{key}={folder!r}: cannot write to this Cloud Storage folder ({type(e).__name__}: {e}); "
                         "check that the bucket exists and that application-default credentials can write to it "
                         "(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS)") from e


def _configure_gcsfs() -> None:
    import fsspec.config

    # Folder listings fresh every time: Orbax writes checkpoints through tensorstore, behind gcsfs's back, so a
    # cached listing would miss the newest step.
    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
    # gcsfs logs a warning for every bucket whose type it cannot look up without credentials of a project (the
    # lookup is optional; it then uses the plain client). Its errors are exceptions, which still reach the user.
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
