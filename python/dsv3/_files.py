"""Output files written whole or not at all, in plain Python (the C++ side's OutputFile, formats/io.hpp):
a unique temporary file beside the target, flushed and synced, then renamed over it; removed on any error."""
import os
import tempfile
from typing import Iterable


def write_file_atomic(path: str, chunks: Iterable[bytes]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
