"""DeepSeek-OCR batch runner: PDFs in, one clean Markdown file per PDF out."""

__version__ = "0.1.0"
