#!/usr/bin/env bash
# Gathers every wheel of the gpu (or cpu) install, pinned, for one interpreter and platform, into OUT_DIR
# with a lock file (requirements.lock: name==version --hash=sha256:...), on a machine with network. Then,
# offline: scripts/setup_env.sh gpu --offline OUT_DIR (docs/offline-install.md).
# Usage: scripts/wheelhouse.sh gpu|cpu OUT_DIR [--python 3.12] [--platform manylinux_2_31_x86_64]
# The platform's glibc must be 2.31 or newer: vLLM 0.32 needs llguidance 1.7, whose wheels start there.
set -euo pipefail
usage() { echo "usage: $0 gpu|cpu OUT_DIR [--python 3.12] [--platform manylinux_2_31_x86_64]" >&2; exit 2; }
[ $# -ge 2 ] || usage
target=$1 out=$2 python=3.12 platform=manylinux_2_31_x86_64
shift 2
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=${2:?}; shift 2 ;;
    --platform) platform=${2:?}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $target == gpu || $target == cpu ]] || usage
[[ $python =~ ^3\.[0-9]+$ ]] || { echo "wheelhouse: --python takes a version such as 3.12" >&2; exit 2; }
[[ $platform =~ ^manylinux_2_([0-9]+)_(x86_64|aarch64)$ ]] ||
  { echo "wheelhouse: --platform takes a tag such as manylinux_2_31_x86_64 (glibc 2.31, x86-64)" >&2; exit 2; }
glibc=${BASH_REMATCH[1]} arch=${BASH_REMATCH[2]}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv

# Resolve once, for the target interpreter and platform rather than this machine's. The wheelhouse also
# holds what the offline side needs to install the rest: uv, and setuptools to build the runner itself.
extras=(--extra "$target" --extra test)
[ "$target" = cpu ] && extras+=(--override "$root/requirements/cpu-overrides.txt")
tools=$(mktemp) && trap 'rm -f "$tools"' EXIT
printf 'setuptools>=68\nuv\n' > "$tools"
echo "resolving the $target install for Python $python on $platform ..."
uv pip compile --quiet --no-header --no-annotate --only-binary :all: --python-version "$python" \
  --python-platform "$arch-manylinux_2_$glibc" "${extras[@]}" "$root/pyproject.toml" "$tools" -o "$out/pins.txt" ||
  { echo "wheelhouse: no set of wheels fits Python $python on $platform (above: which package has none;" \
         "vLLM 0.32 needs glibc 2.31 or newer)" >&2; exit 1; }

# pip matches platform tags exactly: name every manylinux tag this glibc can run.
tags=()
for ((n = glibc; n >= 17; n--)); do tags+=(--platform "manylinux_2_${n}_$arch"); done
[ "$arch" = x86_64 ] && tags+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
[ "$arch" = aarch64 ] && tags+=(--platform manylinux2014_aarch64)
echo "downloading $(grep -c '==' "$out/pins.txt") wheels into $out ..."
start=$SECONDS
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
  "${tags[@]}" -d "$out" -r "$out/pins.txt"

python3 - "$out" "$target" "$python" "$platform" <<'EOF'
"""Write requirements.lock: one `name==version --hash=sha256:...` line per pinned wheel in the folder."""
import hashlib, re, sys
from pathlib import Path
out, target, python, platform = Path(sys.argv[1]), *sys.argv[2:]
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
files = {}
for whl in out.glob("*.whl"):
    name, version = whl.name.split("-")[:2]
    files[(norm(name), version)] = whl
lines, missing, total = [], [], 0
for pin in (out / "pins.txt").read_text().split("\n"):
    pin = pin.split(";")[0].strip()
    if "==" not in pin:
        continue
    name, version = pin.split("==")
    whl = files.get((norm(name), version)) or files.get((norm(name), version.replace("-", "_")))
    if whl is None:
        missing.append(pin)
        continue
    total += whl.stat().st_size
    lines.append(f"{name}=={version} --hash=sha256:{hashlib.sha256(whl.read_bytes()).hexdigest()}")
if missing:
    sys.exit(f"wheelhouse: no wheel downloaded for {', '.join(missing)}")
header = f"# wheelhouse: {target} install, Python {python}, {platform}; {len(lines)} wheels, {total} bytes\n"
(out / "requirements.lock").write_text(header + "\n".join(lines) + "\n")
print(f"wheelhouse: {len(lines)} wheels, {total / 1e9:.2f} GB in {out}")
EOF
rm -f "$out/pins.txt"
echo "wheelhouse: downloaded in $((SECONDS - start)) s; offline: scripts/setup_env.sh $target --offline $out"
