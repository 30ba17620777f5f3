"""IndexRefresher: keeps a server's FAISS and BM25 indexes at its store's generation when another replica or
process changes the store. A thread reads the generation every `interval_s` and, when it moved, builds the new
indexes beside the ones in use and swaps them in: answers never wait for a rebuild (Retriever.follow, refresh)."""
import logging
import threading

from .retriever import Retriever

log = logging.getLogger("cascade_rag")
REFRESH_S = 0.5


class IndexRefresher:
    def __init__(self, retriever: Retriever, interval_s: float = REFRESH_S):
        self.retriever, self.interval_s = retriever, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cascade-rag-index-refresher", daemon=True)
        self.problem: str | None = None

    def start(self) -> "IndexRefresher":
        self.retriever.follow()
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.retriever.refresh()
                if self.problem:
                    log.warning(f"the indexes follow the store again ({self.problem} is over)")
                self.problem = None
            except Exception as exc:  # a store out of reach: answers go on with the indexes held; said once
                if str(exc) != self.problem:
                    log.warning(f"cannot refresh the indexes from the store: {exc}")
                self.problem = str(exc)
            if self.stopped.wait(self.interval_s):
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()
