"""OCR a folder of PDFs into Markdown with DeepSeek-OCR in an in-process vLLM engine (see README)."""

import sys

from ocr.cli import main

if __name__ == "__main__":   # vLLM starts its workers with spawn: nothing heavy may run on import
    sys.exit(main())
