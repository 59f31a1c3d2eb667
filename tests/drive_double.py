"""Run the real CLI with the scripted engine double, as a subprocess target for kill and signal tests.

Usage: python tests/drive_double.py [runner flags...]; OCR_DOUBLE_STEP_S sets the seconds per engine step.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from doubles import ScriptedEngine  # noqa: E402
from ocr.cli import main  # noqa: E402


if __name__ == "__main__":
    step_s = float(os.environ.get("OCR_DOUBLE_STEP_S", "0.1"))
    sys.exit(main(sys.argv[1:], engine_factory=lambda: ScriptedEngine(per_poll=2, step_s=step_s)))
