"""The judge: several scorers at once, with weights, combined into one score per image (no ComfyUI import).

How scores on different scales become one: every scorer's raw score is placed on its own fixed scale, the
``typical_range`` its catalog entry gives (the LAION heads 1-10, a preference model's or CLIPScore's published
range), as a fraction ``(raw - low) / (high - low)``; the combined score is the weighted mean of those fractions,
put back on the FIRST scorer's scale (``low1 + (high1 - low1) * mean``). Why fixed ranges and not standardising
within the batch: a z-score inside one batch gives every batch a mean of 0, so two epochs of a LoRA (two batches)
or two folders could never be compared, and one image's combined score would change with its neighbours. With fixed
ranges an image's combined score depends on that image only: epochs, folders and runs compare, and a judge of one
scorer gives exactly that scorer's raw score (the recipe's bar of 6 on the LAION head keeps working; with more
scorers the bar reads "as good as 6 on the first scorer's scale").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .predictor import ScoreProgress

# the LAION aesthetic heads' scale, for a scorer without a catalog entry (the predictor folders users bring)
LAION_RANGE = (1.0, 10.0)


class JudgeError(ValueError):
    """A judge that cannot score: no scorer, a bad weight, scorers on different devices."""


def scorer_id(scorer) -> str:
    """The name a scorer's column carries: its catalog id, else its folder name."""
    info = getattr(scorer, "info", None)
    return info.id if info is not None else str(getattr(scorer, "name", type(scorer).__name__))


def scorer_range(scorer) -> tuple[float, float]:
    """The fixed scale a scorer's raw scores are placed on (its catalog ``typical_range``)."""
    info = getattr(scorer, "info", None)
    low, high = info.typical_range if info is not None else LAION_RANGE
    if not high > low:
        raise JudgeError(f"{scorer_id(scorer)}: typical range {low}..{high} is empty")
    return float(low), float(high)


def is_prompt_aware(scorer) -> bool:
    return bool(getattr(scorer, "prompt_aware", False))


@dataclass
class JudgeScores:
    """Per image: each scorer's raw score (``columns``, in the judge's order) and the combined score."""

    columns: dict[str, list[float]]
    combined: list[float]

    def table(self, names: Sequence[str] | None = None) -> str:
        """Tab-separated, one row per image: ``combined``, each scorer's score[, name]."""
        head = "\t".join(["combined", *self.columns] + (["file"] if names is not None else []))
        rows = [head]
        for i, c in enumerate(self.combined):
            cells = [_fmt(c)] + [_fmt(col[i]) for col in self.columns.values()]
            rows.append("\t".join(cells + ([names[i]] if names is not None else [])))
        return "\n".join(rows)

    def means(self) -> dict[str, float]:
        """The finite mean of every column, ``combined`` first."""
        return {"combined": _finite_mean(self.combined), **{k: _finite_mean(v) for k, v in self.columns.items()}}


def table_rows(text: str) -> list[dict[str, float]]:
    """The rows of ``JudgeScores.table()`` text as {column: value} (the ``file`` column left out)."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("combined\t"):
        raise ValueError("not a judge's score table (its first line must start with 'combined'): connect the "
                         "table output of Aesthetic Score")
    header = lines[0].split("\t")
    return [{k: float(v) for k, v in zip(header, ln.split("\t")) if k != "file"} for ln in lines[1:]]


def select_rows(text: str, indices: Sequence[int]) -> str:
    """The table with only the rows ``indices`` (in that order): a ranked selection's table."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join([lines[0]] + [lines[1 + i] for i in indices])


def _fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "nan"


def _finite_mean(values: Sequence[float]) -> float:
    good = [v for v in values if math.isfinite(v)]
    return sum(good) / len(good) if good else math.nan


def combine(columns: Sequence[Sequence[float]], ranges: Sequence[tuple[float, float]],
            weights: Sequence[float]) -> list[float]:
    """The combined score per image (see the module docstring). One column: its raw scores, unchanged. An image
    that one scorer could not score (NaN) has no combined score (NaN)."""
    if len(columns) == 1:
        return [float(v) for v in columns[0]]
    total = float(sum(weights))
    low0, high0 = ranges[0]
    out = []
    for row in zip(*columns):
        fraction = sum(w * (v - lo) / (hi - lo) for v, (lo, hi), w in zip(row, ranges, weights)) / total
        out.append(low0 + (high0 - low0) * fraction)
    return out


class Judge:
    """Scorers with weights, itself a scorer (every place that takes a scorer takes a judge): ``score_tensor`` and
    ``score_images`` give the combined score, ``score_table`` every column too. Prompt-aware when any scorer is;
    prompts reach only the prompt-aware scorers."""

    def __init__(self, entries: Sequence[tuple[object, float]]):
        if not entries:
            raise JudgeError("a judge needs at least one scorer")
        ids = [scorer_id(s) for s, _ in entries]
        if len(set(ids)) != len(ids):
            raise JudgeError(f"the judge has the scorer {next(i for i in ids if ids.count(i) > 1)} twice; give each "
                             f"scorer once, with its weight")
        for (s, w), sid in zip(entries, ids):
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise JudgeError(f"{sid}: weight {w!r} must be a finite number >= 0")
        if sum(w for _, w in entries) <= 0:
            raise JudgeError(f"the weights of {', '.join(ids)} are all 0; give at least one a positive weight")
        self.entries = [(s, float(w)) for s, w in entries]
        self.ranges = [scorer_range(s) for s, _ in entries]
        self.ids = ids
        self.info = None
        self.prompt_aware = any(is_prompt_aware(s) for s, _ in entries)
        self.name = ids[0] if len(ids) == 1 else " + ".join(f"{w:g}*{i}" for i, (_, w) in zip(ids, self.entries))

    @property
    def device(self) -> torch.device:
        """The one device every scorer runs on; scorers on different devices are an error (their inputs and the
        memory they need would be on two devices: load them on one)."""
        devices = {str(s.device): s for s, _ in self.entries}
        if len(devices) > 1:
            where = ", ".join(f"{scorer_id(s)} on {d}" for d, s in devices.items())
            raise JudgeError(f"the judge's scorers are on different devices ({where}); load them on the same device")
        return next(iter(self.entries))[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.entries[0][0].dtype

    def modules(self) -> list[torch.nn.Module]:
        return [m for s, _ in self.entries for m in s.modules()]

    def to(self, device):
        for s, _ in self.entries:
            s.to(device)
        return self

    def check_prompts(self, prompts: Sequence[str] | None, count: int) -> None:
        if prompts is not None and len(prompts) != count:
            raise JudgeError(f"{len(prompts)} prompt(s) for {count} image(s): give one prompt per image")
        for s, _ in self.entries:
            if is_prompt_aware(s) and (prompts is None or any(not (p or "").strip() for p in prompts)):
                from .scorers.errors import PromptRequired

                missing = "no prompt" if prompts is None else \
                    f"an empty prompt for image(s) {[i for i, p in enumerate(prompts) if not (p or '').strip()]}"
                raise PromptRequired(f"{scorer_id(s)} scores how well an image matches its prompt and got "
                                     f"{missing}: connect a prompt (the Prompt Composer's output, the captions)")

    def _table(self, run: Callable, count: int, prompts, progress: ScoreProgress | None) -> JudgeScores:
        self.check_prompts(prompts, count)
        _ = self.device  # refuses scorers on different devices before any work
        columns: dict[str, list[float]] = {}
        steps = len(self.entries) * count
        for n, ((scorer, _w), sid) in enumerate(zip(self.entries, self.ids)):
            report = (lambda d, t, n=n: progress(n * count + d, steps)) if progress is not None else None
            scores = run(scorer, prompts if is_prompt_aware(scorer) else None, report)
            if len(scores) != count:
                raise JudgeError(f"{sid} gave {len(scores)} scores for {count} images")
            columns[sid] = [float(v) for v in scores]
        combined = combine(list(columns.values()), self.ranges, [w for _, w in self.entries])
        return JudgeScores(columns, combined)

    def score_table(self, images, prompts: Sequence[str] | None = None, batch_size: int = 16,
                    progress: ScoreProgress | None = None, interrupt: Callable[[], None] | None = None) -> JudgeScores:
        """Every scorer's scores and the combined score of ``images``: a ComfyUI IMAGE tensor [B,H,W,C] or a
        sequence of PIL images."""
        if isinstance(images, torch.Tensor):
            def run(s, p, report):
                return s.score_tensor(images, prompts=p, batch_size=batch_size, progress=report, interrupt=interrupt)
            return self._table(run, images.shape[0], prompts, progress)

        def run_pil(s, p, report):
            return s.score_images(images, prompts=p, batch_size=batch_size, progress=report)
        return self._table(run_pil, len(images), prompts, progress)

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: ScoreProgress | None = None, interrupt: Callable[[], None] | None = None) -> list[float]:
        return self.score_table(images, prompts, batch_size, progress, interrupt).combined

    def score_images(self, images, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: ScoreProgress | None = None) -> list[float]:
        return self.score_table(list(images), prompts, batch_size, progress).combined


def load_judge(specs: Sequence[tuple[str, float]], models_root, device="cpu", dtype="auto", compile: bool = False,
               progress=None):
    """The scorers named by ``specs`` (catalog ids or predictor folders, each with its weight), loaded now: a lone
    scorer of weight 1 as itself, several as a Judge. Nothing is kept here (the command line and the Ray actors
    load one per run)."""
    from pathlib import Path

    from .predictor import load_predictor
    from .scorers import load_scorer

    entries = []
    for name, weight in specs:
        if Path(name).is_dir():
            scorer = load_predictor(Path(name), device, dtype, compile=compile)
        else:
            scorer = load_scorer(name, Path(models_root), device, dtype, progress=progress)
        entries.append((scorer, float(weight)))
    return entries[0][0] if len(entries) == 1 and entries[0][1] == 1.0 else Judge(entries)


def spec_name(specs: Sequence[tuple[str, float]]) -> str:
    """The name ``Judge.name`` gives the judge of ``specs``, without loading it (a folder's scorer is named by it)."""
    from pathlib import Path

    ids = [Path(n).name if Path(n).is_dir() else n for n, _ in specs]
    return ids[0] if len(ids) == 1 else " + ".join(f"{float(w):g}*{i}" for i, (_, w) in zip(ids, specs))


def spec_prompt_aware(specs: Sequence[tuple[str, float]]) -> bool:
    """Whether the judge of ``specs`` reads prompts (from the catalog, without loading it)."""
    from .scorers import CATALOG

    return any(CATALOG[n].prompt_aware for n, _ in specs if n in CATALOG)


def as_judge(scorer) -> Judge:
    """A judge from a scorer or a judge (a lone scorer is a judge of one, weight 1)."""
    return scorer if isinstance(scorer, Judge) else Judge([(scorer, 1.0)])
