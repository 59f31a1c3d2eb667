"""Start runner workers, one per GPU (or group of GPUs with tensor parallelism, or N per GPU), wait, merge the
shard reports."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

from .config import Config, UsageError, build_parser, validate
from .engines.vllm import check_tensor_parallel
from .gpu_sizing import memory_share
from .merge_reports import Shard, load_shard, merge, report_path, summary_lines, write_merged

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNNER = ROOT / "run_pdf_ocr_vllm.py"
DEFAULT_ENV_FILE = ROOT / "aws" / "ocr_env.sh"
OK, INCOMPLETE, USAGE, INTERRUPTED = 0, 1, 2, 130
SEVERITY = {OK: 0, INCOMPLETE: 1, INTERRUPTED: 2, USAGE: 3}     # worst wins: usage > interrupted > incomplete
LAUNCHER_FLAGS = ("--num-shards", "--shard-index")
# Non-secret settings copied into tmux panes (an already running tmux server has its own environment).
PANE_ENV = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "CUDA_HOME")
PANE_ENV_PREFIXES = ("VLLM_", "OCR_")


class LaunchError(ValueError):
    """A launch that cannot work; nothing was started, exit with the usage code."""


@dataclass(frozen=True)
class Worker:
    """One runner process: its shard, the GPUs it sees, its command line and its log."""
    index: int
    gpus: str
    argv: tuple[str, ...]
    log: Path

    @property
    def exit_file(self) -> Path:
        return self.log.with_suffix(".exit")

    def label(self) -> str:
        return f"worker {self.index} (GPU{'s' if ',' in self.gpus else ''} {self.gpus})"


def parse_gpus(text: str) -> list[str]:
    """'0,1,2,3' (or 'all', from nvidia-smi) as a list of distinct GPU indices."""
    if text.strip() == "all":
        from .doctor import query_gpus
        found = [str(g.index) for g in query_gpus() or []]
        if not found:
            raise LaunchError("--gpus all: no NVIDIA GPU found (nvidia-smi lists none)")
        return found
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise LaunchError(f"--gpus {text!r}: give GPU indices separated by commas, such as 0,1,2,3")
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"--gpus {text!r} lists a GPU twice")
    return gpus


def runner_config(runner_args: Sequence[str]) -> Config:
    """The runner's own parser and checks on its arguments, so a typo fails here and not in N workers."""
    for flag in LAUNCHER_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in runner_args):
            raise LaunchError(f"{flag} is set by the launcher for each worker: leave it out")
    parser = build_parser(prog="launch_workers.py")

    def reject(message: str) -> None:
        raise LaunchError(f"runner arguments after --: {message}")
    parser.error = reject                           # one error line instead of argparse's usage dump
    try:
        cfg = validate(Config(**vars(parser.parse_args(list(runner_args)))))
    except UsageError as exc:
        raise LaunchError(str(exc)) from exc
    check_tensor_parallel(cfg.tensor_parallel_size)
    return cfg


def plan_workers(gpus: list[str], tp: int, command: Sequence[str], runner_args: Sequence[str],
                 output_dir: Path, per_gpu: int = 1) -> list[Worker]:
    """`per_gpu` workers per group of `tp` GPUs, each with its shard flags appended (they win over earlier
    ones)."""
    if len(gpus) % tp:
        raise LaunchError(f"{len(gpus)} GPUs ({','.join(gpus)}) do not split into groups of "
                          f"--tensor-parallel-size {tp}: list a multiple of {tp} GPUs")
    groups = [gpus[i:i + tp] for i in range(0, len(gpus), tp) for _ in range(per_gpu)]
    n = len(groups)
    return [Worker(i, ",".join(group), (*command, *runner_args, "--num-shards", str(n), "--shard-index", str(i)),
                   output_dir / "logs" / f"worker-{i}.log") for i, group in enumerate(groups)]


def share_gpu_memory(runner_args: Sequence[str], cfg: Config, per_gpu: int) -> list[str]:
    """The runner's arguments with each of `per_gpu` workers on one GPU given its share of the GPU's memory
    (gpu_sizing.memory_share), or the user's own share if it fits."""
    was_set = any(a == "--gpu-memory-utilization" or a.startswith("--gpu-memory-utilization=") for a in runner_args)
    share = memory_share(cfg.gpu_memory_utilization, was_set, 1 / per_gpu, f"--workers-per-gpu {per_gpu}")
    if per_gpu == 1 or was_set:
        return list(runner_args)
    return [*runner_args, "--gpu-memory-utilization", f"{share:.2f}"]


def load_env_file(path: Path | None) -> dict[str, str]:
    """This environment after sourcing the env file with bash (the same file the shell scripts source)."""
    env = dict(os.environ)
    if path is None:
        return env
    if not path.is_file():
        raise LaunchError(f"--env-file {path} does not exist (use --no-env-file to run without one)")
    done = subprocess.run(["bash", "-c", '. "$1" >/dev/null && env -0', "bash", str(path)],
                          capture_output=True, env=env)
    if done.returncode:
        raise LaunchError(f"sourcing {path} failed: {done.stderr.decode(errors='replace').strip()}")
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if not k.startswith("BASH_FUNC_") and k not in ("_", "SHLVL", "PWD")}


def normalize_exit(code: int | None) -> int:
    """A worker's status as the runner's codes; killed by a signal (or vanished) counts as incomplete."""
    return code if code in SEVERITY else INCOMPLETE


def worst_exit(codes: Sequence[int | None]) -> int:
    return max((normalize_exit(c) for c in codes), key=SEVERITY.__getitem__, default=OK)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status (its pane or process vanished)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    names = {OK: "ok", INCOMPLETE: "incomplete", USAGE: "usage error", INTERRUPTED: "interrupted"}
    return f"exit {code} ({names.get(code, 'incomplete')})"


def open_log(worker: Worker) -> IO[bytes]:
    worker.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(worker.log, "ab")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {worker.label()}: CUDA_VISIBLE_DEVICES={worker.gpus} "
              f"{shlex.join(worker.argv)}\n".encode())
    log.flush()
    return log


def run_background(workers: list[Worker], env: dict[str, str]) -> list[int | None]:
    """Plain child processes, each in its own session so that one Ctrl-C reaches each worker exactly once."""
    procs = []
    for w in workers:
        with open_log(w) as log:
            procs.append(subprocess.Popen(w.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env={**env, "CUDA_VISIBLE_DEVICES": w.gpus}, start_new_session=True))
        print(f"{w.label()}: pid {procs[-1].pid}, log {w.log}", flush=True)

    def forward(signum: int, frame: object) -> None:
        print(f"launcher: {signal.Signals(signum).name}: passing it on to the workers "
              "(send it again to stop them at once)", file=sys.stderr, flush=True)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return wait_all(workers, [p.poll for p in procs])
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def wait_all(workers: list[Worker], polls: list[Callable[[], int | str | None]],
             interval: float = 0.5) -> list[int | None]:
    """Wait for every worker, saying when each one ends; a poll gives None while it runs, 'gone' if lost."""
    codes: dict[int, int | None] = {}
    while len(codes) < len(workers):
        for w, poll in zip(workers, polls):
            if w.index in codes:
                continue
            code = poll()
            if code is not None:
                codes[w.index] = None if code == "gone" else code
                print(f"{w.label()} finished: {describe_exit(codes[w.index])}", flush=True)
        if len(codes) < len(workers):
            time.sleep(interval)
    return [codes[w.index] for w in workers]


def pane_script(w: Worker, env_file: Path | None, env: dict[str, str]) -> str:
    """The bash command of one tmux pane: environment, the worker tee-ing into its log, its exit status."""
    keep = {k: v for k, v in env.items() if k in PANE_ENV or k.startswith(PANE_ENV_PREFIXES)}
    lines = [f"cd {shlex.quote(os.getcwd())}", *(f"export {k}={shlex.quote(v)}" for k, v in sorted(keep.items()))]
    if env_file is not None:
        lines.append(f". {shlex.quote(str(env_file))}")
    lines += [f"export CUDA_VISIBLE_DEVICES={shlex.quote(w.gpus)}",
              f"{shlex.join(w.argv)} 2>&1 | tee -a {shlex.quote(str(w.log))}",
              "rc=${PIPESTATUS[0]}",
              f'echo "$rc" > {shlex.quote(str(w.exit_file))}',
              f'echo "{w.label()} finished: exit $rc"']
    return "bash -c " + shlex.quote("\n".join(lines))


def tmux(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", *args], capture_output=True, text=True)


def start_tmux(session: str, workers: list[Worker], env_file: Path | None, env: dict[str, str]) -> list[str]:
    """One window, one pane per worker (tiled), kept open after the worker ends; returns the pane ids."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", session):
        raise LaunchError(f"--tmux {session!r}: use letters, digits, '-' and '_' only")
    if tmux("has-session", "-t", f"={session}").returncode == 0:
        raise LaunchError(f"tmux session {session} already exists: pick another name or "
                          f"`tmux kill-session -t {session}`")
    window, cwd = f"{session}:ocr", os.getcwd()
    for w in workers:
        open_log(w).close()
        w.exit_file.unlink(missing_ok=True)
    panes = []
    for w in workers:
        if not panes:
            made = tmux("new-session", "-d", "-P", "-F", "#{pane_id}", "-s", session, "-n", "ocr", "-x", "240",
                        "-y", "64", "-c", cwd, pane_script(w, env_file, env), ";",
                        "set-option", "-w", "-t", window, "remain-on-exit", "on")
        else:
            made = tmux("split-window", "-d", "-P", "-F", "#{pane_id}", "-t", window, "-c", cwd,
                        pane_script(w, env_file, env), ";", "select-layout", "-t", window, "tiled")
        if made.returncode:
            if panes:
                tmux("kill-session", "-t", f"={session}")
            raise LaunchError(f"tmux could not start {w.label()}: {made.stderr.strip()}")
        panes.append(made.stdout.split()[0])
        print(f"{w.label()}: tmux pane {panes[-1]} in {window}, log {w.log}", flush=True)
    print(f"watch them: tmux attach -t {session}", flush=True)
    return panes


def tmux_poll(pane: str, worker: Worker) -> Callable[[], int | str | None]:
    """A poll function for a tmux worker: its exit status once written; 'gone' if its pane ended without one."""
    def exit_status() -> int | None:
        try:
            return int(worker.exit_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def poll() -> int | str | None:
        code = exit_status()
        if code is not None:
            return code
        state = tmux("display-message", "-p", "-t", pane, "#{pane_dead}")
        if state.returncode or state.stdout.strip() != "0":     # its shell has ended, or the pane is gone
            code = exit_status()
            return "gone" if code is None else code
        return None
    return poll


def wait_tmux(session: str, panes: list[str], workers: list[Worker], output_dir: Path) -> list[int | None]:
    """Wait for the panes; on Ctrl-C leave the workers running and say how to merge later."""
    try:
        return wait_all(workers, [tmux_poll(p, w) for p, w in zip(panes, workers)], interval=1.0)
    except KeyboardInterrupt:
        print(f"launcher stopped; the workers go on in tmux session {session}. When they are done: "
              f"python -m ocr.merge_reports {shlex.quote(str(output_dir))} --num-shards {len(workers)}",
              file=sys.stderr)
        raise


def finish(workers: list[Worker], codes: list[int | None], cfg_out: Path, started: float) -> int:
    """Merge the shard reports, print the summary, return the launch's exit code."""
    n = len(workers)
    shards: list[Shard] = []
    for w, code in zip(workers, codes):
        shard = load_shard(w.index, report_path(cfg_out, w.index, n), since=started)
        shard.exit_code, shard.gpus = code, w.gpus
        shards.append(shard)
    merged = merge(shards, wall_seconds=time.time() - started)
    path = write_merged(cfg_out, merged, n)
    print("\n".join(summary_lines(merged)))
    print(f"report: {path or report_path(cfg_out, 0, 1)}; worker logs: {cfg_out / 'logs'}/worker-*.log")
    return worst_exit([*codes, *(INCOMPLETE for s in shards if s.problem)])


def build_launcher_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch_workers.py", usage="launch_workers.py --gpus 0,1,2,3 [options] -- RUNNER ARGS",
        description="Run one OCR worker per GPU (CUDA_VISIBLE_DEVICES and --num-shards/--shard-index filled "
                    "in), wait for all, merge their reports into OUT/run_report.json. Exit code: the worst "
                    "worker's (usage 2 > interrupted 130 > incomplete 1 > ok 0).")
    p.add_argument("--gpus", required=True, help="GPU indices, e.g. 0,1,2,3, or 'all'")
    p.add_argument("--workers-per-gpu", type=int, default=1, metavar="N",
                   help="N workers on each GPU (group), each with its share of the GPU's memory; their engines "
                        "load one at a time. On an H200, two made 20.4 pages/s together against 18.7 for one "
                        "worker with as many pages in flight (NOTES.md, session 13)")
    p.add_argument("--tmux", metavar="SESSION", help="run the workers in panes of a new tmux session")
    p.add_argument("--runner", type=Path, default=DEFAULT_RUNNER, help="the runner script")
    p.add_argument("--python", default=sys.executable, help="Python that runs the runner")
    p.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help="bash file sourced for the workers")
    p.add_argument("--no-env-file", action="store_true", help="do not source an env file")
    p.add_argument("--dry-run", action="store_true", help="print the worker commands, start nothing")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise LaunchError("put the runner's arguments after --, e.g. launch_workers.py --gpus 0,1 -- "
                          "--input-dir PDFS --output-dir OUT")
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def launch(argv: Sequence[str]) -> int:
    own, runner_args = split_argv(argv)
    args = build_launcher_parser().parse_args(own)
    gpus = parse_gpus(args.gpus)
    if args.workers_per_gpu < 1:
        raise LaunchError(f"--workers-per-gpu {args.workers_per_gpu}: give 1 or more")
    cfg = runner_config(runner_args)
    runner_args = share_gpu_memory(runner_args, cfg, args.workers_per_gpu)
    if not args.runner.is_file():
        raise LaunchError(f"--runner {args.runner} does not exist")
    if shutil.which(args.python) is None:
        raise LaunchError(f"--python {args.python} is not an executable")
    env_file = None if args.no_env_file else args.env_file.resolve()
    env = load_env_file(env_file)
    extra = ["--no-progress"] if not args.tmux and "--no-progress" not in runner_args else []
    workers = plan_workers(gpus, cfg.tensor_parallel_size, [args.python, str(args.runner.resolve())],
                           [*runner_args, *extra], cfg.output_dir, args.workers_per_gpu)
    if args.dry_run:
        for w in workers:
            print(f"CUDA_VISIBLE_DEVICES={w.gpus} {shlex.join(w.argv)}  > {w.log}")
        return OK
    started = time.time()
    if args.tmux:
        panes = start_tmux(args.tmux, workers, env_file, env)
        codes = wait_tmux(args.tmux, panes, workers, cfg.output_dir)
    else:
        codes = run_background(workers, env)
    return finish(workers, codes, cfg.output_dir, started)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return launch(sys.argv[1:] if argv is None else argv)
    except (LaunchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
