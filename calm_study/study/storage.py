"""A study's storage: a local (or NFS) folder, or an object-store URI (s3://, gs://, abfs://, file://), through
pyarrow's filesystems — the same ones Ray Tune and Ray Train use for the same `storage` value.

Object stores have no append and no rename of folders: appends are a read and a rewrite of the (small) file, and
archiving a study (--fresh) is refused there.

Credentials and the endpoint come from the environment, read by `pyarrow.fs.FileSystem.from_uri` (which Ray calls
too, so calm_study, Tune and Train agree): for S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION or
AWS_REGION, and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible server (http:// works). The bare
`pyarrow.fs.S3FileSystem()` constructor ignores the endpoint variables (pyarrow 26): always go through `from_uri`.
Query options in the URI (`s3://bucket/prefix?endpoint_override=host:port&scheme=http`) are kept in `uri()`.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs


class Storage:
    """`storage` as given in a study: a path (relative to the working directory) or a URI with a scheme."""

    def __init__(self, storage: str):
        self.is_uri = "://" in storage
        if self.is_uri:
            self.fs, self.root = pafs.FileSystem.from_uri(storage)
            self.scheme = storage.split("://", 1)[0]
            self.root = self.root.rstrip("/")
            # from_uri consumes options such as ?endpoint_override=...; Ray re-opens every URI it is given, so they
            # must travel with the URIs handed to it, or Tune and Train would talk to another endpoint than we do.
            self.query = f"?{urlsplit(storage).query}" if urlsplit(storage).query else ""
        else:
            self.fs, self.root, self.scheme = pafs.LocalFileSystem(), str(Path(storage).expanduser().resolve()), ""
            self.query = ""

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

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def mtime(self, path: str) -> float:
        """Seconds since the epoch of the file's last modification."""
        info = self.fs.get_file_info(path)
        if info.mtime is None:
            raise OSError(f"no modification time for {path}")
        return info.mtime.timestamp()

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def parent(self, path: str) -> str | None:
        """The folder holding `path`; None for the filesystem root, and on object stores for a bucket's top-level
        entries (calm_study never creates or removes a bucket, so it never walks up to one)."""
        if self.is_uri and self.scheme != "file":
            return posixpath.dirname(path.rstrip("/")) if path.strip("/").count("/") >= 2 else None
        parent = os.path.dirname(path.rstrip("/"))
        return parent if parent and parent != path else None

    def remove_empty_dir(self, path: str) -> None:
        """Remove a folder if it is empty (on object stores: its empty "directory" marker object)."""
        if not self.is_uri:
            os.rmdir(path)
        elif not self.list_names(path):  # delete_dir is recursive there: never call it on a folder with content
            self.fs.delete_dir(path)

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def write_text(self, path: str, text: str) -> None:
        """Replace the file (locally via a temporary file and a rename; an object-store put is atomic already)."""
        self.makedirs(posixpath.dirname(path) if self.is_uri else os.path.dirname(path))
        target = f"{path}.tmp-{os.getpid()}" if not self.is_uri else path
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode("utf-8"))
        if target != path:
            os.replace(target, path)

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

    def list_names(self, folder: str) -> list[str]:
        """Names of the entries of a folder ([] when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dst: str) -> None:
        if not self.can_move:
            raise OSError(f"cannot move folders on {self.scheme}:// storage")
        self.fs.move(src, dst)
