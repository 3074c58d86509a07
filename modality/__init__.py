"""Modality layers shared by model families (host side: NumPy, no torch)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError


def find_files(input_arg: str, suffixes: tuple, one: str, folder: str, kind: str, hint: str) -> list[Path]:
    """INPUT as a file or a folder (searched recursively): the files with `suffixes` in it, sorted; one line else."""
    path = Path(input_arg)
    if not path.exists():
        raise InputError(f"INPUT {input_arg} does not exist; give {one} or {folder}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"INPUT folder {input_arg} holds no {kind} ({', '.join(suffixes)}); point INPUT at {hint}")
    return files
