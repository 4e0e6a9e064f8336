"""The Ray engine: the local engine's scoring spread over a Ray cluster with Ray Data (``--engine ray``).

The same numbers as the local engine, because the same code computes them: CPU tasks open each file with
``images.open_image`` (same skips, same reasons) and preprocess with the predictor folder's own image processor
(``predictor.preprocess_images``); an actor pool (one predictor per actor, loaded with ``predictor.load_predictor``,
a GPU per actor where the cluster has GPUs) runs ``AestheticPredictor.forward`` (``speed.FastScorer``). The driver
receives the results as they come, stores each batch as a Parquet shard (``ResultsStore.parquet_dir``) and builds the
same report as the local engine.

Nothing is lost or doubled when an actor dies: Ray Data restarts it and runs its unfinished batch again, and a
batch's results reach the driver once, after it is complete.

Ray is optional (``pip install comfyui-aesthete[ray]``): this module imports it only when the engine is used.
Every node needs the pack installed, and the predictor folder and the images at the same paths (a shared filesystem),
or images on a filesystem every node reads (s3://, gs://, hdfs://: pyarrow's filesystems, or fsspec's).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .store import ResultsStore, ScoreRecord, SourceFile, model_key, record_from_row
from ..common.images import DEFAULT_MAX_PIXELS, OpenedImage, open_image

log = logging.getLogger("aesthete.scoring")

RAY_MISSING = ("the Ray engine needs Ray Data, which is not installed here: pip install 'comfyui-aesthete[ray]' "
               "(or pip install 'ray[data]'), or score with --engine local")
RESULT_COLUMNS = ("path", "name", "size", "mtime_ns", "model", "score", "reason", "note", "scores")


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or change."""


class RayJobFailed(EngineUnavailable):
    """The Ray job failed (an actor could not load the predictor, a task kept failing); the message gives the cause."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray without its data extra has no Ray Data
    except ImportError as e:
        raise EngineUnavailable(f"{RAY_MISSING} ({e})") from e
    return ray


def add_engine_arguments(parser) -> None:
    """``--engine``, ``--address`` and the Ray engine's knobs, for ``aesthete score`` and ``aesthete filter``."""
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this process (default, the fast path on one machine); ray: a Ray cluster "
                             "(pip install 'comfyui-aesthete[ray]')")
    parser.add_argument("--address", default=None,
                        help="with --engine ray: an existing Ray cluster (ray://HOST:10001, HOST:6379 or auto); "
                             "none: start Ray on this machine")
    parser.add_argument("--actors", type=int, default=0,
                        help="with --engine ray: scoring actors, one predictor each (default: one per GPU, or "
                             "without GPUs one per 2 CPUs)")


@dataclass
class RayOptions:
    address: str | None = None
    batch_size: int = 16
    actors: int = 0
    device: str = "auto"  # auto: a GPU per actor when the cluster has GPUs, else the CPU
    dtype: str = "auto"  # auto: fp16 on a GPU, fp32 on the CPU (as the local engine)
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress_bars: bool = True
    compile: bool = False  # torch.compile in each actor (see --compile)
    # --scorer: catalog ids or predictor folders with weights (then actors load these, not the predictor folder)
    scorers: tuple[tuple[str, float], ...] = ()
    models_root: str | None = None  # where catalog scorers' files are
    prompt: str | None = None  # a prompt-aware judge's prompt for every image; else each image's caption
    root: str | None = None  # where captions' metadata.csv names start


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    gpus_per_actor: float
    device: str
    dtype: str
    threads: int  # torch threads per actor on the CPU (0: leave torch's default)


def plan_actors(resources: dict, options: RayOptions) -> ActorPlan:
    """How many scoring actors, on what: one per GPU (fp16) when the cluster has GPUs and the device allows; otherwise
    one per 2 CPUs (fp32), each using its share of the cluster's CPUs for the forward pass, so the other half
    decodes."""
    from .predictor import DTYPES

    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    use_gpu = options.device.startswith("cuda") or (options.device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise EngineUnavailable(f"--device {options.device}: the Ray cluster has no GPU; use --device auto or cpu")
    actors = options.actors or (gpus if use_gpu else max(1, cpus // 2))
    dtype = options.dtype
    if dtype == "auto":
        dtype = "fp16" if use_gpu else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    threads = 0 if use_gpu else max(1, round(cpus / actors))
    return ActorPlan(actors, 1.0 if use_gpu else 0.0, "cuda" if use_gpu else "cpu", dtype, threads)


# ---- what runs on the cluster ----

@functools.lru_cache(maxsize=4)
def _processor(folder: str):
    from .predictor import load_image_processor

    return load_image_processor(Path(folder))


def open_any(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> OpenedImage:
    """``open_image`` for a local path; for a URI (s3://, gs://, hdfs://, ...) the bytes are read with pyarrow (or
    fsspec) and handed to the same opener through a temporary file, so the same checks give the same reasons."""
    from .remote import is_uri, read_bytes

    if not is_uri(path):
        return open_image(Path(path), max_pixels=max_pixels)
    try:
        data = read_bytes(path)
    except OSError as e:
        return OpenedImage(Path(path), None, f"cannot read: {e}")
    suffix = Path(path.split("?", 1)[0]).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        opened = open_image(Path(tmp.name), max_pixels=max_pixels)
    return OpenedImage(Path(path), opened.image, opened.reason)


@functools.lru_cache(maxsize=4)
def _pixel_shape(folder: str) -> tuple[int, ...]:
    from PIL import Image

    from .predictor import preprocess_images

    return tuple(preprocess_images(_processor(folder), [Image.new("RGB", (64, 48))]).shape[1:])


def decode_and_preprocess(batch: dict, folder: str, max_pixels: int) -> dict:
    """CPU task: open every file of the batch (skips keep their reason) and preprocess the good ones. ``pixels`` is
    [B,3,S,S] float32 (zeros where ``ok`` is False)."""
    import numpy as np

    from .predictor import preprocess_images

    log.setLevel(logging.ERROR)  # the driver logs each skip once, with its real path
    opened = [open_any(str(p), max_pixels) for p in batch["path"]]
    good = [o.image for o in opened if not o.skipped]
    ok = np.array([not o.skipped for o in opened], dtype=bool)
    if good:
        px = preprocess_images(_processor(folder), good).numpy().astype(np.float32, copy=False)
        pixels = np.zeros((len(opened), *px.shape[1:]), dtype=np.float32)
        pixels[ok] = px
    else:  # zeros of the usual shape: Ray stacks batches' pixels into one tensor column
        pixels = np.zeros((len(opened), *_pixel_shape(folder)), dtype=np.float32)
    out = {k: batch[k] for k in ("path", "name", "size", "mtime_ns", "group")}
    out.update(ok=ok, pixels=pixels, reason=np.array([o.reason if o.skipped else "" for o in opened], dtype=object),
               note=np.array([o.reason if not o.skipped else "" for o in opened], dtype=object))
    return out


class PredictorActor:
    """Scoring actor: one predictor (the local engine's loader and forward), scores for each batch of pixels."""

    def __init__(self, folder: str, device: str, dtype: str, threads: int, model: str, compile: bool = False):
        import torch

        from .predictor import load_predictor

        if threads:
            torch.set_num_threads(threads)
        self.predictor = load_predictor(Path(folder), device, dtype, compile=compile)
        self.model = model

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        ok, groups = batch["ok"], batch["group"]
        scores = np.full(len(ok), np.nan, dtype=np.float64)
        # one forward per group: the local engine's batches (its CPU forward's chunk sizes move scores by float
        # rounding, so the same batches give the same numbers)
        for g in dict.fromkeys(groups.tolist()):
            rows = np.flatnonzero(ok & (groups == g))
            if len(rows):
                pixels = batch["pixels"][rows]
                if pixels.dtype == object:  # a processor without a fixed crop: rows of different shapes
                    pixels = np.stack(list(pixels))
                scores[rows] = self.predictor.forward(torch.from_numpy(np.ascontiguousarray(pixels))).numpy()
        out = {k: batch[k] for k in ("path", "name", "size", "mtime_ns", "reason", "note")}
        out.update(model=np.array([self.model] * len(ok), dtype=object), score=scores,
                   scores=np.array([""] * len(ok), dtype=object))
        return out


def decode_for_judge(batch: dict, max_pixels: int, prompt: str | None, root: str | None, needs_prompt: str) -> dict:
    """CPU task of the judge path: open every file (skips keep their reason) and give the good ones as uint8 [H,W,3]
    arrays with their prompt: ``prompt``, else the caption (the local engine's rule, for URIs too). With
    ``needs_prompt`` (a prompt-aware judge's name) a file without one is skipped with the local engine's reason."""
    import numpy as np

    from .folder import caption_of
    from .remote import caption_of_uri, is_uri

    log.setLevel(logging.ERROR)  # the driver logs each skip once, with its real path
    local_caption = remote_caption = None
    if needs_prompt and not prompt:
        local_caption = caption_of(Path(root) if root and not is_uri(root) else None)
        remote_caption = caption_of_uri(root if root and is_uri(root) else None)
    opened = [open_any(str(p), max_pixels) for p in batch["path"]]
    images = np.empty(len(opened), dtype=object)
    prompts, reasons = [], []
    for i, (path, o) in enumerate(zip(batch["path"], opened)):
        text, why = prompt or "", o.reason if o.skipped else ""
        if not why and local_caption is not None:
            try:
                text = remote_caption(str(path)) if is_uri(str(path)) else local_caption(Path(str(path)))
            except (ValueError, OSError) as e:  # a caption file that cannot be read
                why = str(e)
            if not text and not why:
                why = f"no caption (.txt, .json or metadata.csv): {needs_prompt} needs the prompt of every image"
        images[i] = np.asarray(o.image, dtype=np.uint8) if not why else np.zeros((1, 1, 3), dtype=np.uint8)
        prompts.append(text)
        reasons.append(why)
    ok = np.array([not r for r in reasons], dtype=bool)
    out = {k: batch[k] for k in ("path", "name", "size", "mtime_ns", "group")}
    out.update(ok=ok, image=images, prompt=np.array(prompts, dtype=object), reason=np.array(reasons, dtype=object),
               note=np.array([o.reason if not o.skipped else "" for o in opened], dtype=object))
    return out


class JudgeActor:
    """Scoring actor of the judge path: the scorers of --scorer (judge.load_judge, as the local engine loads them),
    the local engine's ``score_table`` on each group's images with their prompts."""

    def __init__(self, scorers: tuple, models_root: str, device: str, dtype: str, threads: int, model: str,
                 compile: bool = False):
        import torch

        from .judge import as_judge, load_judge

        if threads:
            torch.set_num_threads(threads)
        self.judge = as_judge(load_judge(scorers, models_root, device, dtype, compile=compile))
        self.model = model

    def __call__(self, batch: dict) -> dict:
        import json

        import numpy as np
        from PIL import Image

        ok, groups = batch["ok"], batch["group"]
        scores = np.full(len(ok), np.nan, dtype=np.float64)
        each = np.array([""] * len(ok), dtype=object)
        for g in dict.fromkeys(groups.tolist()):  # one call per group: the local engine's batches
            rows = np.flatnonzero(ok & (groups == g))
            if len(rows):
                images = [Image.fromarray(np.asarray(batch["image"][r], dtype=np.uint8)) for r in rows]
                prompts = [str(batch["prompt"][r]) for r in rows] if self.judge.prompt_aware else None
                table = self.judge.score_table(images, prompts, batch_size=len(rows))
                scores[rows] = table.combined
                if len(table.columns) > 1:
                    for n, r in enumerate(rows):
                        each[r] = json.dumps({k: v[n] for k, v in table.columns.items()})
        out = {k: batch[k] for k in ("path", "name", "size", "mtime_ns", "reason", "note")}
        out.update(model=np.array([self.model] * len(ok), dtype=object), score=scores, scores=each)
        return out


# ---- the driver ----

class RayEngine:
    """``with RayEngine(folder, options) as engine: engine(files, store, progress)``: connects to (or starts) Ray on
    entering, scores on the cluster when called, and disconnects on leaving if it started Ray."""

    def __init__(self, folder: Path | None, options: RayOptions):
        self.folder = Path(folder) if folder is not None else None
        self.options = options
        self.plan: ActorPlan | None = None
        self.model = ""
        self.reuse = True  # False when captions are the prompts (a caption may change without its image)
        self._started = False

    def __enter__(self) -> RayEngine:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.options.address, logging_level=logging.WARNING,
                     configure_logging=True, include_dashboard=False if self.options.address is None else None)
            self._started = True
        self.plan = plan_actors(ray.cluster_resources(), self.options)
        if self.options.scorers:
            from .judge import spec_name, spec_prompt_aware

            import hashlib

            specs = ";".join(f"{w:g}*{model_key(Path(n), self.plan.dtype) if Path(n).is_dir() else n}"
                             for n, w in self.options.scorers)
            self.model = f"judge:{specs}|{self.plan.dtype}"
            self.judge_name = spec_name(self.options.scorers)
            self.prompt_aware = spec_prompt_aware(self.options.scorers)
            if self.prompt_aware and self.options.prompt:
                self.model += "|prompt:" + hashlib.sha256(self.options.prompt.encode()).hexdigest()[:16]
            elif self.prompt_aware:
                self.model += "|captions"
                self.reuse = False
        else:
            self.model = model_key(self.folder, self.plan.dtype)
        log.info("Ray engine: %d scoring actor(s) on %s (%s)%s, batches of %d", self.plan.actors, self.plan.device,
                 self.plan.dtype, f", {self.plan.threads} thread(s) each" if self.plan.threads else "",
                 self.options.batch_size)
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False

    def dataset(self, files: Sequence[SourceFile]):
        """The Ray Data pipeline: file list -> decode and preprocess (CPU tasks) -> scores (actor pool)."""
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = self.options.progress_bars
        plan, bs = self.plan, self.options.batch_size
        if self.options.scorers:
            return self.judge_dataset(files)
        # group = the local engine's batch (batch_size files in order); blocks hold whole groups, so every decode
        # batch is one group and no block splits one (a bigger block limit keeps large GPU batches whole)
        group_bytes = bs * 4 * math.prod(_pixel_shape(str(self.folder)))
        ctx.target_max_block_size = max(ctx.target_max_block_size or 0, 4 * group_bytes)
        ds = ray.data.from_arrow(group_tables(files, bs, max_blocks=MAX_INPUT_BLOCKS))
        ds = ds.map_batches(decode_and_preprocess, batch_size=bs, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"folder": str(self.folder), "max_pixels": self.options.max_pixels})
        actor_args = dict(batch_size=None, batch_format="numpy", concurrency=plan.actors, num_cpus=1,
                          num_gpus=plan.gpus_per_actor or None,
                          fn_constructor_kwargs={"folder": str(self.folder), "device": plan.device,
                                                 "dtype": plan.dtype, "threads": plan.threads, "model": self.model,
                                                 "compile": self.options.compile})
        # SPREAD: actors on as many nodes as possible; it also keeps Ray Data from fusing the decode tasks into the
        # actors (a GPU actor would then wait on the CPU for every batch). Ray 2.64 drops such extra arguments:
        # there the stages may be fused, with the same results.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            try:
                return ds.map_batches(PredictorActor, scheduling_strategy="SPREAD", **actor_args)
            except TypeError:
                return ds.map_batches(PredictorActor, **actor_args)

    def judge_dataset(self, files: Sequence[SourceFile]):
        """The judge path: file list -> decode, with prompts (CPU tasks) -> the judge's scores (actor pool)."""
        import ray

        plan, opts = self.plan, self.options
        ds = ray.data.from_arrow(group_tables(files, opts.batch_size, max_blocks=MAX_INPUT_BLOCKS))
        ds = ds.map_batches(decode_for_judge, batch_size=opts.batch_size, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"max_pixels": opts.max_pixels, "prompt": (opts.prompt or "").strip() or None,
                                       "root": opts.root,
                                       "needs_prompt": self.judge_name if self.prompt_aware else ""})
        return ds.map_batches(JudgeActor, batch_size=None, batch_format="numpy", concurrency=plan.actors, num_cpus=1,
                              num_gpus=plan.gpus_per_actor or None,
                              fn_constructor_kwargs={"scorers": tuple(opts.scorers), "models_root": opts.models_root,
                                                     "device": plan.device, "dtype": plan.dtype,
                                                     "threads": plan.threads, "model": self.model,
                                                     "compile": opts.compile})

    def __call__(self, files: Sequence[SourceFile], store: ResultsStore | None = None,
                 progress=None) -> list[ScoreRecord]:
        if not files:
            return []
        if self.plan is None:
            raise RuntimeError("use the Ray engine inside `with RayEngine(...) as engine:`")
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        records: list[ScoreRecord] = []
        try:
            for n, table in enumerate(self.dataset(files).iter_batches(batch_size=None, batch_format="pyarrow")):
                table = table.select(list(RESULT_COLUMNS))
                if store is not None:
                    write_shard(table, store.parquet_dir / f"{run_id}-{n:06d}.parquet")
                records.extend(record_from_row(row) for row in table.to_pylist())
                if progress is not None:
                    progress(len(records), len(files))
        except import_ray().exceptions.RayError as e:
            cause = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip()), type(e).__name__)
            kept = f"the results so far are in {store.folder}, a re-run continues; " if store is not None else ""
            raise RayJobFailed(f"the Ray job failed after {len(records)} of {len(files)} file(s) ({cause}); {kept}"
                               f"Ray's log above has the details. Every node needs the pack and the predictor folder "
                               f"{self.folder or self.options.models_root}") from e
        for rec in records:
            if rec.score is None:
                log.warning("skipped %s: %s", rec.path, rec.reason)
        return records


MAX_INPUT_BLOCKS = 200  # enough to keep every CPU of a large cluster busy, few enough for the driver


def group_tables(files: Sequence[SourceFile], batch_size: int, max_blocks: int = MAX_INPUT_BLOCKS) -> list:
    """The file list as pyarrow tables (Ray Data blocks) of whole groups of ``batch_size`` files, about ``max_blocks``
    of them; column ``group`` numbers the groups."""
    import pyarrow as pa

    groups = math.ceil(len(files) / batch_size)
    per_block = max(1, math.ceil(groups / max_blocks)) * batch_size
    tables = []
    for start in range(0, len(files), per_block):
        chunk = files[start:start + per_block]
        tables.append(pa.table({"path": [f.path for f in chunk], "name": [f.name for f in chunk],
                                "size": pa.array([f.size for f in chunk], pa.int64()),
                                "mtime_ns": pa.array([f.mtime_ns for f in chunk], pa.int64()),
                                "group": pa.array([(start + i) // batch_size for i in range(len(chunk))], pa.int64())}))
    return tables


def write_shard(table, path: Path) -> None:
    """One Parquet shard, written under a temporary name and renamed (a shard is complete or absent)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
