"""ModelThread: every model call of the server on one thread."""
from concurrent.futures import ThreadPoolExecutor


class ModelThreadStopped(RuntimeError):
    pass


class ModelThread:
    """Runs every model call of the server (language model, embedder, FAISS) on one thread. PyTorch's CPU thread
    pool (OpenMP) belongs to the thread that uses it: each further thread brings another pool, and once their
    threads outnumber the cores OpenMP stops spinning between operations, which halved decode speed on 2 cores."""
    _END = object()

    def __init__(self):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cascade-rag-model")

    def call(self, fn, *args):
        """fn(*args) on the model thread; ModelThreadStopped once shutdown() was called."""
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            raise ModelThreadStopped("the server is shutting down: its model thread has stopped") from None
        return future.result()

    def iterate(self, iterator):
        """The items of `iterator`, each produced on the model thread."""
        while (item := self.call(next, iterator, self._END)) is not self._END:
            yield item

    def shutdown(self) -> None:
        self._executor.shutdown()
