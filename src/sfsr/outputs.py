"""Output folders the user names on the command line (``sfsr make-lr``, ``sfsr upscale``).

Such a folder may already hold the user's files. A command writes only its own ``<stem>.png``
files into it and deletes nothing else: :func:`check_output_folder` refuses, before any work, an
output that is a file or that holds or sits inside the input folder; :func:`move_into_folder`
moves the finished files from their temporary sibling folder in; :func:`describe_outputs` says
what changed. (Workflow outputs are different: Snakemake owns them, see
:func:`sfsr.data.prepare.build_folder`.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from sfsr.errors import ConfigError, PathError, path_problem, writing


def _shown(path: Path) -> str:
    """``path`` as given, plus where it leads when a symlink on the way makes that different."""
    real = os.path.realpath(path)
    return str(path) if real == os.path.abspath(path) else f"{path} (= {real})"


def check_output_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                        names: Iterable[str] = ()) -> None:
    """Refuse ``output_dir`` as the output folder of a command that reads the folder ``input_dir``.

    Refused (one line naming the path and the fix): a symlink on ``output_dir`` that leads nowhere;
    an existing file; the input folder itself, a folder that contains it, or one inside it (paths
    compared after resolving symlinks); and an existing folder at ``output_dir/<name>`` for one
    of ``names`` (the files to be written there). Raises :class:`PathError` or
    :class:`ConfigError`; writes nothing.
    """
    src, dst = Path(input_dir), Path(output_dir)
    problem = path_problem(dst)
    if problem:
        raise PathError(f"output folder {dst} {problem}; fix or remove the link")
    if dst.exists() and not dst.is_dir():
        raise PathError(f"output folder {dst} is an existing file, not a folder; give a folder path "
                        f"(the file is left as it is)")
    real_src, real_dst = Path(os.path.realpath(src)), Path(os.path.realpath(dst))
    fix = f"choose an output folder outside {src}"
    if real_dst == real_src:
        raise ConfigError(f"output folder {_shown(dst)} is the input folder; {fix}")
    if real_dst in real_src.parents:
        raise ConfigError(f"output folder {_shown(dst)} contains the input folder {_shown(src)}; {fix}")
    if real_src in real_dst.parents:
        raise ConfigError(f"output folder {_shown(dst)} is inside the input folder {_shown(src)}; {fix}")
    for name in names:
        if (dst / name).is_dir():
            raise PathError(f"output folder {dst} holds a folder {name} where an output file goes; "
                            f"rename that folder or choose another output folder")


def move_into_folder(tmp: Path, output_dir: str | os.PathLike, names: Iterable[str]) -> None:
    """Put the files ``names`` built in the temporary folder ``tmp`` into ``output_dir``.

    A missing ``output_dir`` becomes ``tmp`` (one rename); into an existing one each file is moved
    with :func:`os.replace` (atomic per file: a same-named file is replaced, nothing else there is
    touched). ``tmp`` is removed in either case.
    """
    dst = Path(output_dir)
    try:
        with writing(dst):
            if not dst.exists():
                os.replace(tmp, dst)
            else:
                for name in names:
                    os.replace(tmp / name, dst / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def folder_entries(folder: str | os.PathLike) -> set[str] | None:
    """Names of the entries of ``folder``; None when it is not an existing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return {p.name for p in folder.iterdir()}


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def describe_outputs(output_dir: str | os.PathLike, written: Iterable[str | os.PathLike],
                     before: set[str] | None) -> str:
    """What writing ``written`` into ``output_dir`` did, given :func:`folder_entries` taken before:
    ``"a new folder"``, or ``"3 new, 2 replaced; 4 other files there left as they were"``."""
    if before is None:
        return "a new folder"
    names = {Path(p).name for p in written}
    text = f"{len(names - before)} new, {len(names & before)} replaced"
    others = sorted(before - names)
    if others:
        folders = sum((Path(output_dir) / name).is_dir() for name in others)
        files = len(others) - folders
        parts = [_count(files, "other file", "other files")] if files else []
        if folders:
            parts.append(_count(folders, "other folder", "other folders"))
        text += f"; {' and '.join(parts)} there left as {'it was' if len(others) == 1 else 'they were'}"
    return text
