"""An ingestion's progress on stderr: the estimate line, then one bar over its passages' tokens with tqdm's ETA."""
import sys

from .ingest_cost import IngestEstimate


class IngestProgress:
    """The estimate line is written in two steps: its counts and bytes at once, its time once calibrated (the first
    slice of passages embedded and the first batch prefilled, both timed). Then the bar: its total is the passages'
    tokens, and each passage's tokens count in two shares, one when it is embedded and the rest when its chunk is
    prefilled and stored (or found on disk), in proportion to the time per token each took when calibrated, so
    the bar moves while a long document is embedded and its ETA follows the pace of the work. Disabled, it writes
    nothing."""

    def __init__(self, estimate: IngestEstimate, enabled: bool, file=None):
        self.estimate, self.enabled, self.file = estimate, enabled, file or sys.stderr
        self.embed_share = 0.0
        self.bar = None
        self._credit = 0.0
        self._announced = False

    def announce(self) -> None:
        """Writes the counts and bytes of the estimate line, which calibrated() ends."""
        if self.enabled:
            self.file.write(self.estimate.line())
            self.file.flush()
            self._announced = True

    def calibrated(self, embed_tokens: int, embed_s: float, prefill_tokens: int, prefill_s: float) -> None:
        """Ends the estimate line with the time at the rates measured and opens the bar; the calibration's embedded
        tokens count on it at once."""
        embed = embed_s / embed_tokens if embed_tokens else 0.0
        prefill = prefill_s / prefill_tokens if prefill_tokens else 0.0
        head = self.estimate.line()
        self.estimate.time(embed, prefill)
        self.embed_share = embed / (embed + prefill) if embed + prefill > 0 else 0.5
        if not self.enabled:
            return
        self.file.write(self.estimate.line()[len(head):] + "\n")
        self._announced = False
        from tqdm import tqdm
        self.bar = tqdm(total=self.estimate.tokens, file=self.file, dynamic_ncols=True, unit=" tokens",
                        unit_scale=True, desc="ingesting",
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n:,}/{total:,} tokens "
                                   "[{elapsed}<{remaining}, {rate_fmt}]")
        self.embedded(embed_tokens)

    def embedded(self, tokens: int) -> None:
        self._advance(tokens * self.embed_share)

    def stored(self, tokens: int) -> None:
        """A passage is done: its chunk prefilled and stored, or found on disk."""
        self._advance(tokens * (1 - self.embed_share))

    def _advance(self, tokens: float) -> None:
        if self.bar is None:
            return
        self._credit += tokens
        step = min(round(self._credit), self.bar.total) - self.bar.n
        if step > 0:
            self.bar.update(step)

    def close(self) -> None:
        if self._announced:  # calibration failed: end the line
            self.file.write("\n")
            self._announced = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None
