"""Judging a set of LoRA files side by side, apart from ComfyUI: which files (a folder or a name pattern among the
LoRA folder's files), in which order (epoch and step as their names say), at which strengths, and the result: a
row per file and strength with its images and scores, the table, the best row, the grid and the score graph.

The node (nodes/sweep_nodes.py) applies each file with ComfyUI's LoRA code and generates and judges the images on
the path Train LoRA's per-epoch validation uses (nodes/generate.py)."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from ..common.charts import draw_lines_graph
from ..scoring.annotate import GridRow, draw_scored_grid, format_score
from .files import LORA_SUFFIXES


class SweepError(ValueError):
    """A LoRA set or strength list that cannot be judged; the message says what was given and what to do."""


# What a file's name says about when it was saved, most specific first. Each gives (epoch, step); None where the
# name does not say.
_NAME_NUMBERS = (
    # DiffSynth-Studio / Lightning: lightning_logs/version_0/checkpoints/epoch=4-step=500.ckpt
    (re.compile(r"epoch=(\d+)-step=(\d+)"), lambda m: (int(m[1]), int(m[2]))),
    # Train LoRA's own epoch saves (my_lora_epoch0004_00001), other trainers' _epoch4 / -epoch-4
    (re.compile(r"(?:^|[_\-.])epoch[_\-]?(\d+)", re.I), lambda m: (int(m[1]), None)),
    (re.compile(r"(?:^|[_\-.])step[_\-]?(\d+)", re.I), lambda m: (None, int(m[1]))),
    # kohya and most trainers: name-000004
    (re.compile(r"-(\d+)$"), lambda m: (int(m[1]), None)),
    # ComfyUI's SaveLoRA (name_00004_) and counters like it (name_00004)
    (re.compile(r"_(\d+)_?$"), lambda m: (int(m[1]), None)),
)


@dataclass(frozen=True)
class SweepFile:
    name: str  # as ComfyUI lists it under models/loras (folders separated by "/")
    epoch: int | None = None
    step: int | None = None

    @property
    def numbered(self) -> bool:
        return self.epoch is not None or self.step is not None

    @property
    def when(self) -> str:
        parts = ([f"epoch {self.epoch}"] if self.epoch is not None else []) + \
                ([f"step {self.step}"] if self.step is not None else [])
        return ", ".join(parts) or "-"


def name_numbers(name: str) -> tuple[int | None, int | None]:
    """(epoch, step) as the file name says: ``epoch=4-step=500`` (DiffSynth), ``_epoch0004``, ``-000004``
    (kohya), ``_00004_`` (ComfyUI); (None, None) for a name with no number."""
    stem = PurePosixPath(name).name
    for suffix in LORA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for pattern, numbers in _NAME_NUMBERS:
        match = pattern.search(stem)
        if match:
            return numbers(match)
    return None, None


@dataclass(frozen=True)
class SweepSet:
    files: tuple[SweepFile, ...]
    order_note: str  # how the order was decided, for the report


def select_files(names: Sequence[str], selector: str) -> SweepSet:
    """The LoRA files ``selector`` names among ``names`` (the LoRA folder's listing), in epoch/step order.

    ``selector`` is a subfolder of the LoRA folder (every LoRA file under it: DiffSynth's whole ``checkpoints/``
    folder dropped in works) or a name pattern with ``*``/``?`` (``my_lora-*.safetensors``, matched against the
    listed name and against the bare file name). Files whose names hold no number come after the numbered ones,
    alphabetically, and the order note says so."""
    selector = (selector or "").strip().replace("\\", "/")
    if not selector:
        raise SweepError("lora_set: empty; give a subfolder of models/loras (e.g. my_run/checkpoints) or a name "
                         "pattern (e.g. my_lora-*.safetensors)")
    loras = [n.replace("\\", "/") for n in names if n.lower().endswith(LORA_SUFFIXES)]
    if any(ch in selector for ch in "*?["):
        chosen = [n for n in loras if fnmatch.fnmatchcase(n, selector)
                  or fnmatch.fnmatchcase(PurePosixPath(n).name, selector)]
        what = f"the pattern {selector!r}"
    else:
        folder = selector.strip("/") + "/"
        chosen = [n for n in loras if n.startswith(folder)]
        what = f"the folder models/loras/{folder}"
    if not chosen:
        folders = sorted({str(PurePosixPath(n).parent) for n in loras if "/" in n})
        raise SweepError(f"lora_set: no LoRA file ({', '.join(LORA_SUFFIXES)}) in {what}; "
                         + (f"folders with LoRA files: {', '.join(folders[:10])}" if folders
                            else "models/loras has no subfolder with LoRA files")
                         + ". Put the files to compare in one subfolder of models/loras and name it")
    files = [SweepFile(n, *name_numbers(n)) for n in chosen]
    numbered = sorted((f for f in files if f.numbered),
                      key=lambda f: (f.epoch if f.epoch is not None else -1, f.step if f.step is not None else -1,
                                     f.name))
    unnumbered = sorted((f for f in files if not f.numbered), key=lambda f: f.name)
    if not unnumbered:
        note = "in epoch/step order, as the file names say"
    elif not numbered:
        note = "alphabetical: the file names hold no epoch or step number"
    else:
        note = (f"in epoch/step order as the names say, then {len(unnumbered)} file(s) whose names hold no number, "
                "alphabetically")
    return SweepSet(tuple(numbered + unnumbered), note)


def parse_strengths(text: str) -> tuple[float, ...]:
    """``"0.6, 0.8, 1.0"`` -> (0.6, 0.8, 1.0); commas, semicolons or spaces between; empty means (1.0,);
    repeats are dropped."""
    parts = [p for p in re.split(r"[,;，\s]+", (text or "").strip()) if p]
    if not parts:
        return (1.0,)
    values: list[float] = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise SweepError(f"strengths: {p!r} is not a number; write them like 0.6, 0.8, 1.0") from None
        if not math.isfinite(v):
            raise SweepError(f"strengths: {p!r} is not a finite number")
        if v not in values:
            values.append(v)
    return tuple(values)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _spread(values: Sequence[float]) -> float:
    """The population standard deviation of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    m = sum(finite) / len(finite)
    return math.sqrt(sum((v - m) ** 2 for v in finite) / len(finite))


@dataclass
class SweepRow:
    """One file at one strength (``file`` None: the base model without a LoRA): its images in prompt order, the
    judge's score per image (``scores``; None when there is no judge), each scorer's scores (``columns``), or the
    reason it could not be judged (``error``)."""

    file: SweepFile | None
    strength: float
    images: list[Image.Image] = field(default_factory=list)
    scores: list[float] | None = None
    columns: dict[str, list[float]] = field(default_factory=dict)
    error: str = ""

    @property
    def label(self) -> str:
        if self.file is None:
            return "base (no LoRA)"
        return f"{PurePosixPath(self.file.name).name} @ {self.strength:g}"

    @property
    def mean(self) -> float:
        return _mean(self.scores) if self.scores else math.nan


@dataclass
class SweepResult:
    rows: list[SweepRow]
    order_note: str = ""

    def ranked(self) -> list[SweepRow]:
        """Rows with a score, best mean first (the earlier row on a tie: fewer epochs, lower strength)."""
        scored = [r for r in self.rows if math.isfinite(r.mean)]
        return sorted(scored, key=lambda r: (-r.mean, self.rows.index(r)))

    def best(self) -> SweepRow | None:
        """The best-scoring row; without scores, the last file's row at the last strength (as Train LoRA outputs
        the last epoch without a predictor); None when nothing was judged."""
        ranked = self.ranked()
        if ranked:
            return ranked[0]
        judged = [r for r in self.rows if not r.error and r.file is not None]
        return judged[-1] if judged else None

    def scorer_names(self) -> list[str]:
        names: list[str] = []
        for row in self.rows:
            names += [n for n in row.columns if n not in names]
        return names

    def table(self) -> str:
        """Tab-separated: rank, file, epoch/step, strength, mean and spread per scorer, the judge's mean, and a
        note (the reason a file failed); the best row marked with ``*``."""
        ranks = {id(r): i + 1 for i, r in enumerate(self.ranked())}
        best = self.best()
        scorers = self.scorer_names()
        head = ["rank", "file", "epoch/step", "strength"]
        head += [f"{s} mean\t{s} spread" for s in scorers] + ["score", "note"]
        lines = ["\t".join(head)]
        for r in self.rows:
            cells = [str(ranks.get(id(r), "-")), r.file.name if r.file else "(base model)",
                     r.file.when if r.file else "-", f"{r.strength:g}" if r.file else "-"]
            for s in scorers:
                values = r.columns.get(s)
                cells.append(f"{format_score(_mean(values))}\t{_spread(values):.3f}" if values else "-\t-")
            cells.append(format_score(r.mean) if r.scores else "-")
            cells.append(("failed: " + r.error) if r.error else ("* best" if r is best else ""))
            lines.append("\t".join(cells))
        return "\n".join(lines)

    def summary(self) -> str:
        best = self.best()
        if best is None:
            return "no file could be judged (the table says why)"
        if not math.isfinite(best.mean):
            return f"no judge: {best.label} is handed on (the last file); connect a scorer to choose by score"
        return f"best: {best.label}, mean score {format_score(best.mean)}"

    def grid(self, cell: int = 256) -> Image.Image:
        """A row per file and strength (the base first when judged), every image with its score drawn on, each row
        headed by its file, epoch, strength and mean score; the best row's heading is red."""
        best = self.best()
        rows = []
        for r in self.rows:
            heading = [r.label if r.file is None else PurePosixPath(r.file.name).name]
            if r.file is not None:
                heading += [r.file.when, f"strength {r.strength:g}"]
            heading += [f"failed: {r.error[:60]}"] if r.error else (
                [f"score {format_score(r.mean)}"] if r.scores else [])
            rows.append(GridRow(heading, r.images, r.scores, highlight=r is best))
        return draw_scored_grid(rows, cell=cell, label_width=170)

    def graph(self, width: int = 720, height: int = 400) -> Image.Image:
        """Mean score per file in epoch order, one panel per scorer on its own scale (the judge's combination first
        when it combines several), a line per strength; the best point circled on the panel it was chosen by."""
        files: list[SweepFile] = []
        for r in self.rows:
            if r.file is not None and r.file not in files:
                files.append(r.file)
        strengths = sorted({r.strength for r in self.rows if r.file is not None})
        at = {(r.file, r.strength): r for r in self.rows if r.file is not None}
        scorers = self.scorer_names()
        keys = (["judge"] if len(scorers) != 1 else []) + scorers  # the first is what the best row was chosen by
        best = self.best()
        labels = [f"e{f.epoch}" if f.epoch is not None else (f"s{f.step}" if f.step is not None
                                                            else PurePosixPath(f.name).stem[:12]) for f in files]
        base = next((r for r in self.rows if r.file is None and r.scores), None)
        panels = []
        for key in keys:
            series: dict[str, list[float]] = {}
            highlight = None
            for s in strengths:
                name = f"strength {s:g}"
                rows = [at.get((f, s)) for f in files]
                series[name] = [math.nan if r is None else (r.mean if key == "judge" else _mean(r.columns.get(key, [])))
                                for r in rows]
                if key == keys[0] and best is not None and best.file is not None and best.strength == s:
                    highlight = (name, files.index(best.file))
            title = ("mean score per file" if key == "judge" or len(keys) == 1 else f"mean {key} per file")
            if base is not None and key == keys[0]:
                title += f" (base model: {format_score(base.mean)})"
            panels.append(draw_lines_graph(series, labels, title=title, width=width, height=height,
                                           highlight=highlight))
        out = Image.new("RGB", (width * len(panels), height), "white")
        for i, panel in enumerate(panels):
            out.paste(panel, (i * width, 0))
        return out
