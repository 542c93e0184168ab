"""Assemble ``{data_dir}/raw/<dataset>/`` from downloaded files or a local archive.

Archives are extracted safely (:func:`sfsr.data.download.extract_archive`); other files (label
files such as Oxford-102's ``imagelabels.mat``) are linked or copied beside them. The folder is
built in a temporary sibling and renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sfsr.data.download import archive_format, extract_archive, is_archive
from sfsr import io
from sfsr.errors import DataError


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble_raw(inputs: list[Path], dest: Path, extract: dict[str, bool] | None = None) -> Path:
    """Extract/collect ``inputs`` into ``dest``; ``extract`` maps a file name to False to keep an
    archive packed. Two inputs providing the same top-level name is an error (naming both)."""
    dest = Path(dest)
    extract = extract or {}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.make_temp_dir(dest, ".tmp")
    try:
        origin: dict[str, Path] = {}
        for i, src in enumerate(map(Path, inputs)):
            if not src.exists():
                raise DataError(f"input {src} does not exist; check the dataset's path/files in "
                                "config.yaml")
            wants_extract = extract.get(src.name, True)
            looks_packed = is_archive(src) or archive_format(src) is not None  # damaged: extract says so
            if wants_extract and src.is_file() and not looks_packed:
                raise DataError(f"{src} is not an archive (zip, tar, tar.gz/tgz, tar.bz2, tar.xz) but the "
                                "dataset expects one to extract. Point 'path' at the archive or at a "
                                "folder of images; for a plain file that belongs beside the images (a "
                                "label file) set 'extract: false' for it in config.yaml")
            if looks_packed and wants_extract:
                part = tmp / f".part{i}"
                extract_archive(src, part)
                children = list(part.iterdir())
            else:
                children = [src]
            for child in children:
                if child.name in origin:
                    raise DataError(f"{src} and {origin[child.name]} both provide "
                                    f"'{child.name}'; cannot merge them into {dest}")
                origin[child.name] = src
                if child.parent == tmp / f".part{i}":
                    child.rename(tmp / child.name)
                else:
                    _link_or_copy(child, tmp / child.name)
            if (tmp / f".part{i}").exists():
                (tmp / f".part{i}").rmdir()
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
