"""A study's storage: a local (or NFS) folder, or an object-store URI (s3://, gs://, abfs://, file://), through
pyarrow's filesystems — the same ones Ray Tune and Ray Train use for the same `storage` value.

Object stores have no append and no rename of folders: appends are a read and a rewrite of the (small) file, and
archiving a study (--fresh) is refused there.

Credentials and the endpoint come from the environment, read by `pyarrow.fs.FileSystem.from_uri` (which Ray calls
too, so calm_study, Tune and Train agree): for S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or
AWS_REGION, and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible server (http:// works). The bare
`pyarrow.fs.S3FileSystem()` constructor ignores the endpoint variables (pyarrow 26): always go through `from_uri`.
Query options in the URI (`s3://bucket/prefix?endpoint_override=host:port&scheme=http`) are kept in `uri()`.

A value that cannot work is refused before any work: `storage_problems` (validation) names a scheme pyarrow has no
filesystem for and a query option it does not take, without asking the store; an object store that does not answer,
a bucket that does not exist or denied access raise StorageError, one paragraph, from whichever call first asks the
store (`run` asks it first in its pre-flight check, state.check_writable).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from calm_study.configio import did_you_mean

SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss")  # URI schemes pyarrow's filesystems (and so Ray) open
# The query options pyarrow's S3 filesystem takes in a URI (pyarrow 26), for a "did you mean" (pyarrow decides)
S3_OPTIONS = ("region", "scheme", "endpoint_override", "allow_bucket_creation", "allow_bucket_deletion",
              "tls_ca_file_path", "tls_verify_certificates", "allow_delayed_open", "smart_defaults")


class StorageError(OSError):
    """An object store that cannot be used as given (nothing answers, no such bucket, access denied); the message is
    one paragraph naming the storage and what to check."""


def storage_problems(key: str, value: str) -> list[str]:
    """Problems of a storage value that show without asking the store (validation): a scheme pyarrow has no
    filesystem for, or a URI it does not accept (a query option it does not take, a bad option value)."""
    if "://" not in value:
        return []
    scheme = value.split("://", 1)[0]
    if scheme not in SCHEMES:
        return [f"{key}: {value!r}: scheme {scheme}:// is not supported{did_you_mean(scheme, SCHEMES)}; valid: a "
                f"local (or NFS) folder, or a URI with scheme {', '.join(s + '://' for s in SCHEMES)}"]
    query = urlsplit(value).query
    offline = value
    if scheme == "s3" and "region=" not in query:  # else pyarrow asks the bucket's region over the network
        offline = f"{value}{'&' if query else '?'}region=us-east-1"
    try:
        pafs.FileSystem.from_uri(offline)
    except (ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        option = re.search(r"Unexpected query parameter in S3 URI: '([^']*)'", reason)
        hint = (f"{did_you_mean(option[1], S3_OPTIONS)}; options of an s3:// URI: {', '.join(S3_OPTIONS)}"
                if option else "; valid: http, https" if "connection scheme" in reason else "")
        return [f"{key}: {value!r}: {reason}{hint}"]
    return []


Method = TypeVar("Method", bound=Callable[..., Any])


def _explained(method: Method) -> Method:
    """An object store's errors (a server that does not answer, no such bucket, access denied) as StorageError;
    local ones, and a file that does not exist, as they are."""

    @functools.wraps(method)
    def call(self: Storage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (StorageError, FileNotFoundError):
            raise
        except OSError as e:
            if not self.is_uri or self.scheme == "file":
                raise
            raise StorageError(self.explain(e)) from None

    return call  # type: ignore[return-value]


class Storage:
    """`storage` as given in a study: a path (relative to the working directory) or a URI with a scheme."""

    def __init__(self, storage: str):
        self.given = storage
        self.is_uri = "://" in storage
        if self.is_uri:
            self.scheme = storage.split("://", 1)[0]
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(storage)
            except (ValueError, OSError) as e:  # a bad URI, or (S3 without a region) a bucket that does not answer
                raise StorageError(self.explain(e)) from None
            self.root = self.root.rstrip("/")
            # from_uri consumes options such as ?endpoint_override=...; Ray re-opens every URI it is given, so they
            # must travel with the URIs handed to it, or Tune and Train would talk to another endpoint than we do.
            self.query = f"?{urlsplit(storage).query}" if urlsplit(storage).query else ""
        else:
            self.fs, self.root, self.scheme = pafs.LocalFileSystem(), str(Path(storage).expanduser().resolve()), ""
            self.query = ""

    def endpoint(self) -> str:
        """Where an s3:// store is asked: the URI's endpoint_override, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
        else AWS itself."""
        query = dict(part.partition("=")[::2] for part in urlsplit(self.given).query.split("&") if part)
        return (query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3 (no endpoint set)")

    def explain(self, e: BaseException) -> str:
        """One paragraph for an object store's error: what is wrong, in words, and what to check."""
        text = " ".join(str(e).split()) or type(e).__name__
        where = self.endpoint() if self.scheme == "s3" else f"the {self.scheme}:// service"
        bucket = urlsplit(self.given).netloc
        if re.search(r"NETWORK_CONNECTION|Could not connect|Could not resolve|Couldn't connect|[Tt]imed? ?out", text):
            why = (f"nothing answers at {where}; check that the server runs and the endpoint"
                   + (" (AWS_ENDPOINT_URL, or ?endpoint_override=host:port&scheme=http in the URI)"
                      if self.scheme == "s3" else ""))
        elif re.search(r"[Bb]ucket .*not found|NoSuchBucket|RESOURCE_NOT_FOUND during HeadBucket", text):
            why = (f"the bucket {bucket!r} does not exist at {where}; create it first (calm_study never creates or "
                   "removes a bucket), or correct its name")
        elif re.search(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|\b403\b", text):
            why = ("access is denied: check the credentials (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and "
                   "what they may do in the bucket")
        else:
            why = "the store refused the request"
        return f"storage: {self.given!r}: {why} ({text[:300]})"

    @property
    def can_move(self) -> bool:
        """Folders can be renamed (local folders, file://); object stores would copy every object instead."""
        return not self.is_uri or self.scheme == "file"

    def path(self, *parts: str) -> str:
        """A path inside the storage (what pyarrow's filesystem takes)."""
        return posixpath.join(self.root, *parts) if self.is_uri else os.path.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        """What Ray takes as storage_path: the URI for object stores, the absolute path for local folders."""
        p = self.path(*parts)
        if not self.is_uri:
            return p
        return (f"{self.scheme}:///{p.lstrip('/')}" if self.scheme == "file" else f"{self.scheme}://{p}") + self.query

    @_explained
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    @_explained
    def mtime(self, path: str) -> float:
        """Seconds since the epoch of the file's last modification."""
        info = self.fs.get_file_info(path)
        if info.mtime is None:
            raise OSError(f"no modification time for {path}")
        return info.mtime.timestamp()

    @_explained
    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def parent(self, path: str) -> str | None:
        """The folder holding `path`; None for the filesystem root, and on object stores for a bucket's top-level
        entries (calm_study never creates or removes a bucket, so it never walks up to one)."""
        if self.is_uri and self.scheme != "file":
            return posixpath.dirname(path.rstrip("/")) if path.strip("/").count("/") >= 2 else None
        parent = os.path.dirname(path.rstrip("/"))
        return parent if parent and parent != path else None

    @_explained
    def remove_empty_dir(self, path: str) -> None:
        """Remove a folder if it is empty (on object stores: its empty "directory" marker object)."""
        if not self.is_uri:
            os.rmdir(path)
        elif not self.list_names(path):  # delete_dir is recursive there: never call it on a folder with content
            self.fs.delete_dir(path)

    @_explained
    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    @_explained
    def write_text(self, path: str, text: str) -> None:
        """Replace the file (locally via a temporary file and a rename; an object-store put is atomic already)."""
        self.makedirs(posixpath.dirname(path) if self.is_uri else os.path.dirname(path))
        target = f"{path}.tmp-{os.getpid()}" if not self.is_uri else path
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode("utf-8"))
        if target != path:
            os.replace(target, path)

    @_explained
    def append_line(self, path: str, line: str) -> None:
        """Append one line durably: fsync'd append locally, read + rewrite on object stores (no append there)."""
        if not self.is_uri:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            return
        self.write_text(path, (self.read_text(path) or "") + line + "\n")

    @_explained
    def list_names(self, folder: str) -> list[str]:
        """Names of the entries of a folder ([] when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(info.base_name for info in infos)

    @_explained
    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dst: str) -> None:
        if not self.can_move:
            raise OSError(f"cannot move folders on {self.scheme}:// storage")
        self.fs.move(src, dst)
