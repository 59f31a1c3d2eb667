"""Preflight check of this machine before an OCR run (see README, "Preflight")."""

import sys

from ocr.doctor import main

if __name__ == "__main__":
    sys.exit(main())
