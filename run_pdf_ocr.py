"""OCR a folder of PDFs into Markdown with DeepSeek-OCR in Hugging Face transformers: one process, no vLLM.

The reference for run_pdf_ocr_vllm.py (same flags, same output files) and the runner for machines where vLLM
cannot be installed. See README and ocr/engines/hf.py.
"""

import sys

from ocr.engines.hf import main

if __name__ == "__main__":
    sys.exit(main())
