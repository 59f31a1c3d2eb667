"""Find the model weights: a local checkpoint (refusing Git LFS placeholders) or a Hugging Face download."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
LFS_MAGIC = b"version https://git-lfs"


class SetupError(RuntimeError):
    """Something to fix before any GPU work can start; the message says how."""


def lfs_stubs(folder: Path) -> list[Path]:
    """Weight files that are Git LFS pointers (a clone without `git lfs pull`), not tensors."""
    stubs = []
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        if path.stat().st_size < 1024 and path.read_bytes()[:len(LFS_MAGIC)] == LFS_MAGIC:
            stubs.append(path)
    return stubs


def check_local(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise SetupError(f"{folder} has no config.json: point --model at a DeepSeek-OCR checkpoint folder")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    stubs = lfs_stubs(folder)
    if not weights or stubs:
        what = f"{stubs[0].name} is a {stubs[0].stat().st_size}-byte Git LFS placeholder" if stubs \
            else "no weight files"
        raise SetupError(f"{folder}: {what}, not the real weights. Fetch them with: "
                         f"hf download deepseek-ai/DeepSeek-OCR --local-dir {folder}")
    return folder


def resolve_model(model: str) -> str:
    """A local folder to load: the folder itself, or the Hugging Face snapshot (downloaded if missing)."""
    path = Path(model).expanduser()
    if path.exists():
        return str(check_local(path))
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, local_files_only=True)
    except Exception:
        log.info("%s is not in the Hugging Face cache: downloading it", model)
    try:
        return snapshot_download(model)            # shows tqdm progress per file
    except Exception as exc:
        raise SetupError(f"cannot download {model} ({type(exc).__name__}: {exc}). Check the network "
                         f"and HF_TOKEN, or download it elsewhere and pass --model /path/to/folder") from exc
