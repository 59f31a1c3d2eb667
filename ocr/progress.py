"""The progress bar: pages done, pages/s and ETA (tqdm), quiet when not wanted."""

from __future__ import annotations

from tqdm import tqdm


class Progress:
    def __init__(self, disabled: bool = False):
        self._bar = tqdm(total=None, unit="page", dynamic_ncols=True, disable=disabled,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} pages [{elapsed}<{remaining}, "
                                    "{rate_fmt}]{postfix}")
        self._tokens = 0

    def page_done(self, tokens: int = 0) -> None:
        self._tokens += tokens
        self._bar.update(1)
        self._bar.set_postfix_str(f"{self._tokens} tokens", refresh=False)

    def add_total(self, pages: int) -> None:
        """More pages to do (a PDF was opened): the total grows as the run opens PDFs."""
        self._bar.total = max((self._bar.total or 0) + pages, self._bar.n)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
