"""Images on a filesystem named by a URI (s3://, gs://, hdfs://, file://, or any fsspec protocol whose package is
installed), for the Ray engine: listing a folder as ``list_images`` lists a local one, and reading a file's bytes.
pyarrow (which Ray Data brings) is imported only here, only when a URI is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from ..common.captions import METADATA_CSV, caption_from, parse_metadata_csv
from ..common.images import CAPTION_SUFFIXES


def is_uri(path) -> bool:
    return "://" in str(path)


def filesystem(uri: str):
    """A pyarrow filesystem and the path in it: pyarrow's own (s3, gs, hdfs, file), else fsspec's through pyarrow."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # noqa: BLE001 - a scheme pyarrow lacks: fsspec's implementation, if installed
        try:
            import fsspec
        except ImportError as e:
            raise ValueError(f"{uri}: pyarrow cannot read this scheme and fsspec is not installed "
                             f"(pip install fsspec and the package of that filesystem)") from e
        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def list_uri(uri: str, recursive: bool = False) -> list[tuple[str, str, int, int]]:
    """(uri, name relative to ``uri``, size, mtime_ns) of every file under the folder ``uri`` (sorted), or of the file
    it names. Like ``list_images``: hidden files and caption/metadata files are left out."""
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    fs, base = filesystem(uri)
    prefix = uri[:-len(base)] if base and uri.endswith(base) else uri[:uri.index("://") + 3]
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such file or folder")
    if info.type == pafs.FileType.File:
        return [(uri, PurePosixPath(base).name, info.size, info.mtime_ns or 0)]
    out = []
    for item in fs.get_file_info(pafs.FileSelector(base, recursive=recursive)):
        if item.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(item.path).relative_to(PurePosixPath(base))
        if any(part.startswith(".") for part in rel.parts) or rel.suffix.lower() in CAPTION_SUFFIXES:
            continue
        out.append((prefix + item.path, rel.as_posix(), item.size, item.mtime_ns or 0))
    return sorted(out)


def list_named(uri: str, file_name: str, recursive: bool = False) -> list[tuple[str, str]]:
    """(uri, name relative to ``uri``) of the files called ``file_name`` (metadata.csv) under the folder ``uri``,
    outside hidden folders."""
    import pyarrow.fs as pafs

    uri = uri.rstrip("/")
    fs, base = filesystem(uri)
    prefix = uri[:-len(base)] if base and uri.endswith(base) else uri[:uri.index("://") + 3]
    out = []
    for item in fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True)):
        rel = PurePosixPath(item.path).relative_to(PurePosixPath(base))
        if item.type == pafs.FileType.File and rel.name == file_name and \
                not any(part.startswith(".") for part in rel.parts):
            out.append((prefix + item.path, rel.as_posix()))
    return sorted(out)


def with_suffix(uri: str, suffix: str) -> str:
    """``uri`` with its file name's suffix replaced (``s3://b/a.png`` -> ``s3://b/a.txt``)."""
    old = PurePosixPath(uri).suffix
    return (uri[:-len(old)] if old else uri) + suffix


def caption_of_uri(root: str | None) -> Callable[[str], str]:
    """The caption of an image named by a URI, by the rule local images keep (``common.captions``): its ``.txt`` or
    ``.json`` beside it, else its row of the ``metadata.csv`` in its folder or in ``root`` (where the rows' names
    start); "" when it has none. Each folder is listed once, and only files that are there are read."""
    import pyarrow.fs as pafs

    listings: dict[str, set[str]] = {}
    tables: dict[str, dict[str, str]] = {}

    def names_in(folder: str) -> set[str]:
        if folder not in listings:
            fs, base = filesystem(folder)
            items = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            listings[folder] = {PurePosixPath(i.path).name for i in items if i.type == pafs.FileType.File}
        return listings[folder]

    def text_of(uri: str) -> str | None:
        folder, _, name = uri.rpartition("/")
        return read_bytes(uri).decode("utf-8", errors="replace") if name in names_in(folder) else None

    def metadata_of(folder: str) -> dict[str, str]:
        if folder not in tables:
            text = text_of(f"{folder}/{METADATA_CSV}")
            tables[folder] = {} if text is None else parse_metadata_csv(text, f"{folder}/{METADATA_CSV}")
        return tables[folder]

    top = root.rstrip("/") if root else None

    def caption(uri: str) -> str:
        folder = uri.rpartition("/")[0]
        metadata, relative = metadata_of(folder), None
        if top is not None and uri.startswith(top + "/"):
            relative = uri[len(top) + 1:]
            metadata = {**metadata_of(top), **metadata}
        tags, _ = caption_from(lambda suffix: text_of(with_suffix(uri, suffix)), with_suffix(uri, ""),
                               PurePosixPath(uri).name, metadata, relative)
        return ", ".join(tags)

    return caption
