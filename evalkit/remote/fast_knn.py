"""Exact top-k retrieval in both directions, in one pass over the score matrix.

Usage (on the server):
    python fast_knn.py --image-feats IMG.jsonl --text-feats TXT.jsonl --top-k 10 \
        [--t2i-output P] [--i2t-output P] [--device auto|cuda|cpu] [--chunk-size N]

Writes the same prediction files as Chinese-CLIP's make_topk_predictions.py
(text→image) and make_topk_predictions_tr.py (image→text), which score one query at a time and
read each feature file twice between them. Here each file is read once, scores come from tiled
matrix products and torch.topk, and memory stays at one chunk x chunk tile whatever the gallery.

Upstream's ranking, reproduced exactly:
  * features are float32 (parsed as Python floats, then rounded once to float32) and scores are
    float32 inner products: no normalisation, no float16, no TF32;
  * predictions are sorted(..., key=score, reverse=True)[:k], a stable sort, so equal scores keep
    gallery file order: the lower file position comes first.
The one thing not reproduced is the summation order inside upstream's 1-row matrix product, so
two scores within a few float32 ulps of each other may be computed in the other order.

Standalone on purpose: it is uploaded and run with the server's python (torch + numpy only).
torch is imported only after the parse workers have forked (a fork must not copy torch's
threads or CUDA context), and small bad inputs are reported without paying for the import.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    import torch

PROG = "fast_knn"
# Below this size a feature file parses faster in-process than a worker pool starts.
PARALLEL_PARSE_MIN_BYTES = 8 << 20
MAX_PARSE_WORKERS = 16

Candidates = Tuple[np.ndarray, np.ndarray]  # per query: scores and gallery indices, unordered


class KnnError(Exception):
    """Bad input or an unwritable output: main() prints it as one line and exits 1."""


# ----------------------------------------------------------------------------- reading

class Features:
    """The ids (as JSON gave them, so they are written back unchanged) and a float32 matrix."""

    def __init__(self, ids: list, matrix: np.ndarray) -> None:
        self.ids = ids
        self.matrix = matrix


def parse_workers(total_bytes: int) -> int:
    """How many processes should parse; 1 (inline) for inputs too small to repay a pool."""
    if total_bytes < PARALLEL_PARSE_MIN_BYTES or not hasattr(os, "fork"):
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_PARSE_WORKERS))


class FeatureLoad:
    """One feature file being parsed: in `pieces` line-aligned parts on `pool`, or inline."""

    def __init__(self, path: str, id_key: str, kind: str, size: int, pool, pieces: int) -> None:
        self.path, self.kind = path, kind
        jobs = [(path, id_key, start, end)
                for start, end in _line_aligned_ranges(path, size, pieces)]
        if pool is not None and len(jobs) > 1:
            self._pending, self._parts = pool.starmap_async(_parse_range, jobs), None
        else:
            self._pending, self._parts = None, [_parse_range(*job) for job in jobs]

    def result(self) -> Features:
        parts = self._pending.get() if self._pending is not None else self._parts
        ids = [item for part_ids, _ in parts for item in part_ids]
        if not ids:
            raise KnnError(f"no {self.kind} features in {self.path}: the file has no feature lines")
        matrices = [matrix for _, matrix in parts if len(matrix)]
        _check_same_dimension(self.path, matrices)
        return Features(ids, np.concatenate(matrices))


def _line_aligned_ranges(path: str, size: int, pieces: int) -> List[Tuple[int, int]]:
    starts = [0]
    with open(path, "rb") as handle:
        for piece in range(1, pieces):
            handle.seek(max(size * piece // pieces, starts[-1]))
            handle.readline()  # finish the line the cut fell into
            starts.append(handle.tell())
    ends = starts[1:] + [size]
    return [(start, end) for start, end in zip(starts, ends) if end > start]


def _parse_range(path: str, id_key: str, start: int, end: int) -> Tuple[list, np.ndarray]:
    """Parse the lines in bytes [start, end) exactly as upstream does: json.loads per line."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise KnnError(f"{path}: not UTF-8 text (byte {start + error.start})") from None
    ids, rows = [], []
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ids.append(record[id_key])
            rows.append(_feature_of(record))
        except (ValueError, KeyError, TypeError) as error:
            line_number = _line_number(path, start) + offset
            raise KnnError(f"{path}:{line_number}: {_describe(error, id_key)}") from None
    return ids, _to_float32(path, start, lines, rows)


def _feature_of(record: dict) -> list:
    feature = record["feature"]
    if not isinstance(feature, list) or not feature:
        raise TypeError("'feature' must be a non-empty list of numbers")
    return feature


def _describe(error: Exception, id_key: str) -> str:
    if isinstance(error, KeyError):
        return f"missing key {error} (each line needs {id_key!r} and 'feature')"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error.msg})"
    return str(error)


def _to_float32(path: str, start: int, lines: List[str], rows: list) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        expected = len(rows[0])
        bad = next(i for i, row in enumerate(rows) if len(row) != expected)
        raise KnnError(f"{path}:{_feature_line(path, start, lines, bad)}: feature has "
                       f"{len(rows[bad])} values, earlier lines have {expected}")
    try:
        # Upstream: np.array(python floats, dtype=np.float32), one rounding from float64.
        matrix = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise KnnError(f"{path}: feature values must be numbers ({error})") from None
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise KnnError(f"{path}:{_feature_line(path, start, lines, bad)}: feature has a "
                       "NaN or infinite value; the ranking would be meaningless")
    return matrix


def _feature_line(path: str, start: int, lines: List[str], row: int) -> int:
    """The file line number of the row-th non-blank line of this piece."""
    non_blank = [offset for offset, line in enumerate(lines) if line.strip()]
    return _line_number(path, start) + non_blank[row]


def _line_number(path: str, byte_offset: int) -> int:
    """1-based number of the line starting at byte_offset; only computed to report an error."""
    with open(path, "rb") as handle:
        return handle.read(byte_offset).count(b"\n") + 1


def _check_same_dimension(path: str, matrices: List[np.ndarray]) -> None:
    dimensions = [matrix.shape[1] for matrix in matrices]
    if len(set(dimensions)) > 1:
        raise KnnError(f"{path}: features have different lengths "
                       f"({', '.join(map(str, sorted(set(dimensions))))} values)")


# ----------------------------------------------------------------------------- ranking

def choose_device(name: str) -> torch.device:
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise KnnError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # Upstream scores in full float32; TF32 would reorder near neighbours.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch.device(name)


def merge_top(best: Optional[Tuple[torch.Tensor, torch.Tensor]], values: torch.Tensor,
           indices: torch.Tensor, keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-`keep` per row of the union of two candidate sets (values, gallery indices)."""
    import torch
    if best is None:
        return values, indices
    values = torch.cat([best[0], values], dim=1)
    indices = torch.cat([best[1], indices], dim=1)
    top = values.topk(min(keep, values.shape[1]), dim=1)
    return top.values, indices.gather(1, top.indices)


class Progress:
    """A tqdm-style line on stderr, at most about once a second, so logs stay short."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total = description, total
        self.started = self.shown = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self.shown < 1.0:
            return
        self.shown = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - done) / rate if rate > 0 else 0.0
        print(f"{self.description}: {done}/{self.total} [{_clock(elapsed)}<{_clock(remaining)}, "
              f"{rate:.2f}it/s]", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:02d}:{seconds:02d}"


def top_candidates(texts: torch.Tensor, images: torch.Tensor, keep: int, chunk: int,
                   want_t2i: bool, want_i2t: bool
                   ) -> Tuple[Optional[Candidates], Optional[Candidates]]:
    """Top-`keep` (scores, indices) for every text over images and every image over texts.

    The score matrix texts @ images.T is visited one chunk x chunk tile at a time; each tile
    updates the running best of its text rows and of its image columns, so both directions
    cost one matrix product.
    """
    text_blocks = range(0, len(texts), chunk)
    image_blocks = range(0, len(images), chunk)
    t2i_best: List[Optional[tuple]] = [None] * len(text_blocks)
    i2t_parts = []
    progress = Progress("scoring tiles", len(text_blocks) * len(image_blocks))
    for image_block, i0 in enumerate(image_blocks):
        image_tile = images[i0:i0 + chunk]
        i2t_best = None
        for text_block, t0 in enumerate(text_blocks):
            scores = texts[t0:t0 + chunk] @ image_tile.T
            if want_t2i:
                top = scores.topk(min(keep, scores.shape[1]), dim=1)
                t2i_best[text_block] = merge_top(t2i_best[text_block], top.values,
                                              top.indices + i0, keep)
            if want_i2t:
                # topk over a transposed view is ~3x slower on the CPU than copy + topk.
                top = scores.T.contiguous().topk(min(keep, scores.shape[0]), dim=1)
                i2t_best = merge_top(i2t_best, top.values, top.indices + t0, keep)
            progress.update(image_block * len(text_blocks) + text_block + 1)
        if want_i2t:
            i2t_parts.append(i2t_best)
    return (to_numpy(t2i_best) if want_t2i else None,
            to_numpy(i2t_parts) if want_i2t else None)


def to_numpy(parts: list) -> Candidates:
    import torch
    values = torch.cat([part[0] for part in parts]).cpu().numpy()
    indices = torch.cat([part[1] for part in parts]).cpu().numpy()
    return values, indices


def rank(values: np.ndarray, indices: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(top-k gallery indices per query in upstream's order, queries whose top k is not settled).

    Upstream's stable descending sort puts equal scores in file order, so candidates are ordered
    by (score descending, index ascending). topk may pick any of several equal scores at the
    k-th place, so when the k-th and (k+1)-th best scores are equal the query is re-ranked over
    the whole gallery (see rank_fully).
    """
    order = np.lexsort((indices, -values), axis=1)
    ranked = np.take_along_axis(indices, order, axis=1)
    if values.shape[1] <= k:
        return ranked, np.zeros(len(values), dtype=bool)
    sorted_values = np.take_along_axis(values, order, axis=1)
    unsettled = sorted_values[:, k - 1] == sorted_values[:, k]
    return ranked[:, :k], unsettled


def rank_fully(queries: torch.Tensor, gallery: torch.Tensor, rows: np.ndarray, k: int,
               chunk: int) -> np.ndarray:
    """Upstream's ranking for a few queries: every gallery score, then a stable sort."""
    import torch
    per_batch = max(1, chunk * chunk // len(gallery))
    ranked = []
    for b0 in range(0, len(rows), per_batch):
        batch = queries[torch.as_tensor(rows[b0:b0 + per_batch], device=queries.device)]
        scores = torch.cat([batch @ gallery[g0:g0 + chunk].T
                            for g0 in range(0, len(gallery), chunk)], dim=1).cpu().numpy()
        ranked.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
    return np.concatenate(ranked)


def predictions(queries: torch.Tensor, gallery: torch.Tensor, candidates: Candidates, k: int,
                chunk: int) -> np.ndarray:
    """Top-k gallery indices per query, in upstream's order."""
    ranked, unsettled = rank(*candidates, k)
    rows = np.flatnonzero(unsettled)
    if len(rows):
        ranked[rows] = rank_fully(queries, gallery, rows, k, chunk)
    return ranked


# ----------------------------------------------------------------------------- writing

def write_predictions(path: str, query_key: str, query_ids: list, result_key: str,
                      gallery_ids: list, ranked: np.ndarray) -> None:
    """One JSON line per query, formatted like upstream; replaces `path` only when complete."""
    lines = (json.dumps({query_key: query_id, result_key: [gallery_ids[i] for i in row]}) + "\n"
             for query_id, row in zip(query_ids, ranked.tolist()))
    write_atomically(path, lines, "predictions")


def write_atomically(path: str, pieces: Iterable[str], what: str) -> None:
    """PIECES of text into `path`, replacing it only when complete."""
    def write(handle) -> None:
        for piece in pieces:
            handle.write(piece.encode("utf-8"))
    try:
        _write_new(path, write)
    except OSError as error:
        raise KnnError(f"cannot write {what} to {path}: {error.strerror}") from None


def _write_new(path: str, write: Callable) -> None:
    """WRITE(binary handle) into a new temporary file (O_EXCL, O_NOFOLLOW: nothing planted at its
    name redirects it), then rename it over `path`; on any failure the temporary file goes."""
    temporary = f"{path}.tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with open(os.open(temporary, flags, 0o644), "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- command line

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fast_knn.py", description=__doc__.split("\n")[0])
    parser.add_argument("--image-feats", required=True, help="image feature JSONL")
    parser.add_argument("--text-feats", required=True, help="text feature JSONL")
    parser.add_argument("--top-k", type=int, default=10, help="predictions per query (default 10)")
    parser.add_argument("--t2i-output", help="text→image predictions JSONL to write")
    parser.add_argument("--i2t-output", help="image→text predictions JSONL to write")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to score (default auto: cuda when available)")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="tile side: memory is about chunk-size² x 4 bytes (default 4096)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.chunk_size < 1:
        parser.error("--chunk-size must be at least 1")
    if not (args.t2i_output or args.i2t_output):
        parser.error("nothing to write: give --t2i-output and/or --i2t-output")
    return args


def _say(message: str) -> None:
    print(f"{PROG}: {message}", flush=True)


def load(files: List[Tuple[str, str, str]],
         check: Callable[[List[Features]], None] = lambda features: None) -> List[Features]:
    """Read feature files, given as (path, id key, kind): from their binary copy when it is of
    the file as it is now, else parsed (in parallel pieces when large) and, once CHECK accepts
    them all, the copy written."""
    stamps = [source_stamp(path, kind) for path, _, kind in files]
    cached = [read_binary_copy(path, stamp) for (path, _, _), stamp in zip(files, stamps)]
    to_parse = [(file, stamp) for file, stamp, features in zip(files, stamps, cached) if features is None]
    workers = parse_workers(sum(stamp[0] for _, stamp in to_parse))
    # fork starts workers at once; it is safe because torch is not imported yet.
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        loads = [FeatureLoad(path, id_key, kind, stamp[0], pool, workers)
                 for (path, id_key, kind), stamp in to_parse]
        if pool is not None:
            import torch  # noqa: F401  the parent would only wait: import while workers parse
        parsed = iter([each.result() for each in loads])
    finally:
        if pool is not None:
            pool.terminate()
    features = [each if each is not None else next(parsed) for each in cached]
    check(features)
    for (path, _, _), stamp, each, was_cached in zip(files, stamps, features, cached):
        if was_cached is None:
            write_binary_copy(path, stamp, each)
    return features


# ----------------------------------------------------------------------------- binary copies
# Parsing 30,000 JSON lines of 512 floats costs seconds; the KNN step and image→image both read
# the image features. The first to parse leaves a float32 copy beside the file (hidden, with
# the source's size and mtime); the next reads it in a fraction of a second. A copy of another
# version of the file is ignored and replaced, and one that cannot be written costs nothing.

BINARY_COPY_FORMAT = 1


def binary_copy_paths(path: str) -> Tuple[str, str]:
    """(matrix .npy, ids + source stamp .json) of PATH's binary copy: hidden, beside it."""
    folder, name = os.path.split(path)
    base = os.path.join(folder, f".{name}.evalkit-float32")
    return base + ".npy", base + ".json"


def source_stamp(path: str, kind: str) -> Tuple[int, int]:
    """(size, mtime in ns) of a feature file; a binary copy belongs to one stamp."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise KnnError(f"cannot read {kind} features: {path}: {error.strerror}") from None
    return stat.st_size, stat.st_mtime_ns


def read_binary_copy(path: str, stamp: Tuple[int, int]) -> Optional[Features]:
    matrix_path, meta_path = binary_copy_paths(path)
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta.get("format") != BINARY_COPY_FORMAT or meta.get("source") != list(stamp):
            return None
        matrix = np.load(matrix_path, allow_pickle=False)
        ids = meta["ids"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if matrix.dtype != np.float32 or matrix.ndim != 2 or len(matrix) != len(ids) or not len(ids):
        return None
    return Features(ids, matrix)


def write_binary_copy(path: str, stamp: Tuple[int, int], features: Features) -> None:
    """Best effort: the matrix first, then the stamp that makes it valid."""
    matrix_path, meta_path = binary_copy_paths(path)
    meta = {"format": BINARY_COPY_FORMAT, "source": list(stamp), "ids": features.ids}
    try:
        _write_new(matrix_path, lambda handle: np.save(handle, features.matrix, allow_pickle=False))
        _write_new(meta_path, lambda handle: handle.write(json.dumps(meta).encode("utf-8")))
    except OSError:
        pass



def load_both(args: argparse.Namespace) -> Tuple[Features, Features]:
    """Read both feature files, which must come from one model."""
    images, texts = load([(args.image_feats, "image_id", "image"), (args.text_feats, "text_id", "text")],
                         check=_same_model)
    return images, texts


def _same_model(features: List[Features]) -> None:
    dims = [each.matrix.shape[1] for each in features]
    if dims[0] != dims[1]:
        raise KnnError(f"image features have {dims[0]} values but text features have "
                       f"{dims[1]}: they must come from one model")


def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    images, texts = load_both(args)
    _say(f"loaded {len(images.ids)} image and {len(texts.ids)} text features "
         f"({images.matrix.shape[1]}-d) in {time.monotonic() - started:.1f}s")
    import torch
    device = choose_device(args.device)
    image_matrix = torch.from_numpy(images.matrix).to(device)
    text_matrix = torch.from_numpy(texts.matrix).to(device)
    _say(f"scoring {len(texts.ids)} texts x {len(images.ids)} images on {device}")
    keep = args.top_k + 1  # one past k shows whether the k-th place is a tie
    t2i, i2t = top_candidates(text_matrix, image_matrix, keep, args.chunk_size,
                              bool(args.t2i_output), bool(args.i2t_output))
    if args.t2i_output:
        ranked = predictions(text_matrix, image_matrix, t2i, args.top_k, args.chunk_size)
        write_predictions(args.t2i_output, "text_id", texts.ids, "image_ids", images.ids, ranked)
        _say(f"top-{args.top_k} text→image predictions are saved in {args.t2i_output}")
    if args.i2t_output:
        ranked = predictions(image_matrix, text_matrix, i2t, args.top_k, args.chunk_size)
        write_predictions(args.i2t_output, "image_id", images.ids, "text_ids", texts.ids, ranked)
        _say(f"top-{args.top_k} image→text predictions are saved in {args.i2t_output}")


def run_reporting(prog: str, work: Callable[[], None]) -> None:
    """WORK; bad input or an unwritable output becomes one line on stderr and exit status 1."""
    try:
        work()
    except KnnError as error:
        sys.exit(f"{prog}: error: {error}")


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    run_reporting(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
