"""Run one OCR worker per GPU and merge their reports (see README, "Multi-GPU"; aws/multi_gpu_plan.md)."""

import sys

from ocr.launch import main

if __name__ == "__main__":
    sys.exit(main())
