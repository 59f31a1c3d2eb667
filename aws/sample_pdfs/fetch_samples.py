#!/usr/bin/env python3
"""Fetch the sample PDFs a manifest lists, check each sha256, and skip files that are already here."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / "greek_pdf_samples.json"
# The schema in code, so the script needs no third-party package; tests check it agrees with schema.json.
REQUIRED = {"id": str, "title": str, "file": str, "source_url": str, "sha256": str, "pages": int, "language": str}
OPTIONAL = {"other_languages": list, "bytes": int, "kind": str, "source_repo": str, "commit": str, "path": str,
            "notes": str}
PATTERNS = {"id": r"[a-z0-9][a-z0-9._-]*", "file": r"[A-Za-z0-9][A-Za-z0-9._-]*\.pdf",
            "source_url": r"(https|file)://.+", "sha256": r"[0-9a-f]{64}", "language": r"[a-z]{2,3}",
            "commit": r"[0-9a-f]{40}"}


def entry_errors(i: int, e: Any) -> list[str]:
    """What is wrong with one manifest entry (empty when it is fine)."""
    if not isinstance(e, dict):
        return [f"samples[{i}] is not an object"]
    where = f"samples[{i}] ({e.get('id', '?')})"
    errors = [f"{where}: missing {k}" for k in REQUIRED if k not in e]
    errors += [f"{where}: unknown field {k}" for k in e if k not in REQUIRED and k not in OPTIONAL]
    for k, v in e.items():
        kind = REQUIRED.get(k) or OPTIONAL.get(k)
        if kind and (not isinstance(v, kind) or isinstance(v, bool)):
            errors.append(f"{where}: {k} must be a {kind.__name__}")
        elif k in PATTERNS and not re.fullmatch(PATTERNS[k], v):
            errors.append(f"{where}: {k} {v!r} does not match {PATTERNS[k]}")
        elif kind is int and v < 0:
            errors.append(f"{where}: {k} must be >= 0")
        elif k == "other_languages" and not all(isinstance(x, str) and re.fullmatch(PATTERNS["language"], x)
                                                for x in v):
            errors.append(f"{where}: other_languages must be language codes such as 'es'")
    return errors


def validate_manifest(data: Any) -> list[str]:
    """Errors against the documented schema (schema.json); ids and file names must be unique."""
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list) or not data["samples"]:
        return ["the manifest must be an object with a non-empty 'samples' list"]
    errors = [] if data.get("version") == 1 else ["version must be 1"]
    for i, e in enumerate(data["samples"]):
        errors += entry_errors(i, e)
    for key in ("id", "file"):
        values = [e.get(key) for e in data["samples"] if isinstance(e, dict)]
        errors += [f"duplicate {key} {v!r}" for v in sorted({v for v in values if values.count(v) > 1})]
    return errors


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, part: Path, timeout: float) -> str:
    """Stream url into part; return the sha256 of what arrived."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
        for block in iter(lambda: response.read(1 << 20), b""):
            h.update(block)
            f.write(block)
    return h.hexdigest()


def fetch_one(e: dict[str, Any], dest: Path, timeout: float = 120.0) -> tuple[str, str]:
    """('SKIP' | 'OK' | 'FAIL', message) for one entry; a file with the wrong hash never stays on disk."""
    target, want = dest / e["file"], e["sha256"]
    note = ""
    if target.exists():
        if sha256_file(target) == want:
            return "SKIP", f"{e['id']}: {target} already here (sha256 ok)"
        target.unlink()
        note = " (the copy here had a wrong sha256: deleted, fetched again)"
    part = target.with_name(target.name + ".part")
    try:
        got = download(e["source_url"], part, timeout)
    except (OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        return "FAIL", f"{e['id']}: cannot download {e['source_url']}: {exc}"
    if got != want:
        part.unlink(missing_ok=True)
        return "FAIL", f"{e['id']}: sha256 mismatch (got {got}, manifest says {want}); the download was deleted"
    os.replace(part, target)
    return "OK", f"{e['id']}: fetched {target} ({target.stat().st_size} bytes){note}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, required=True, help="folder to put the PDFs in")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="the JSON list of samples")
    parser.add_argument("--only", action="append", metavar="ID", help="fetch only this id (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per download")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.manifest}: {exc}", file=sys.stderr)
        return 2
    errors = validate_manifest(data)
    if errors:
        print("\n".join(f"error: {args.manifest.name}: {e}" for e in errors), file=sys.stderr)
        return 2
    chosen = [e for e in data["samples"] if not args.only or e["id"] in args.only]
    unknown = sorted(set(args.only or ()) - {e["id"] for e in data["samples"]})
    if unknown:
        print(f"error: no sample with id {', '.join(unknown)}", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    results = [fetch_one(e, args.dest, args.timeout) for e in chosen]
    for status, message in results:
        print(f"{status:<4} {message}")
    counts = {s: sum(r[0] == s for r in results) for s in ("OK", "SKIP", "FAIL")}
    print(f"fetched {counts['OK']}, already here {counts['SKIP']}, failed {counts['FAIL']}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
