"""Find the PDFs under the input folder, in a fixed order, and keep this worker's shard."""

from __future__ import annotations

import heapq
import os
import stat
from pathlib import Path

from .records import PdfJob


def find_pdfs(input_dir: Path) -> list[Path]:
    """Every *.pdf (any case) under input_dir, sorted by relative path; symlink loops are not followed."""
    found = []
    for root, dirs, files in os.walk(input_dir, followlinks=False):
        dirs.sort()
        found.extend(Path(root, f) for f in files if f.lower().endswith(".pdf"))
    return sorted(found, key=lambda p: p.relative_to(input_dir).as_posix())


_NOT_REGULAR = [(stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISDIR, "a folder")]


def file_problem(path: Path) -> str | None:
    """Why a discovered path cannot be read as a PDF without opening it (opening a FIFO blocks until
    someone writes to it, a device may never end), or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _NOT_REGULAR if test(mode)), "not a regular file")
    return f"not a regular file: {kind}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def assign_shards(paths: list[Path], num_shards: int) -> list[int]:
    """Shard of each path, balanced by file size (a proxy for pages): largest first onto the lightest shard.

    Every worker computes the same assignment from the same corpus, so shards are disjoint and cover it.
    """
    order = sorted(range(len(paths)), key=lambda i: (-_size(paths[i]), paths[i].as_posix()))
    loads = [(0, s) for s in range(num_shards)]
    shards = [0] * len(paths)
    for i in order:
        load, s = heapq.heappop(loads)
        shards[i] = s
        heapq.heappush(loads, (load + max(_size(paths[i]), 1), s))
    return shards


def md_path_for(rel: Path, output_dir: Path, keep_suffix: bool = False) -> Path:
    """<output>/<relative folder>/<stem>.md: same stems in different folders never collide. `keep_suffix`
    (for x.pdf beside x.PDF, which would share x.md): <name>.md, i.e. x.pdf.md and x.PDF.md."""
    return output_dir / rel.parent / ((rel.name if keep_suffix else rel.stem) + ".md")


def md_paths(rels: list[Path], output_dir: Path) -> list[Path]:
    """Each relative PDF path's Markdown (`md_path_for`), keeping the suffix of PDFs whose <stem>.md another
    PDF of the same folder would also get (compared without case, so a case-insensitive output disk is
    safe too)."""
    seen: dict[str, list[Path]] = {}
    for rel in rels:
        seen.setdefault((rel.parent / rel.stem).as_posix().casefold(), []).append(rel)
    shared = {rel for group in seen.values() if len(group) > 1 for rel in group}
    return [md_path_for(rel, output_dir, keep_suffix=rel in shared) for rel in rels]


def plan_jobs(input_dir: Path, output_dir: Path, num_shards: int = 1, shard_index: int = 0) -> list[PdfJob]:
    paths = find_pdfs(input_dir)
    rels = [path.relative_to(input_dir) for path in paths]
    jobs = []
    for path, rel, md, shard in zip(paths, rels, md_paths(rels, output_dir), assign_shards(paths, num_shards)):
        if shard == shard_index:
            jobs.append(PdfJob(index=len(jobs), path=path, rel=rel, md_path=md))
    return jobs
