"""What every report.html shares, defined once: the page (sections run one by one, a failing one
becomes a note), the figure maker, class names, the picked test cases, and the sections both
the sweep report (`report.build`) and the evaluation report (`ray_xray.evaluate.report`) show:
confusion matrices, ROC/PR curves, calibration, training curves, sample predictions, Grad-CAM.
Each report passes its own headings and captions; the drawing and the choices are here."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import write_atomic
from . import html, plots
from .inputs import log_to_stderr

FIG_DIR = "figures"

Log = Callable[[str], None]


def is_highlight(cls: str) -> bool:
    """True for the class a report marks (tuberculosis: the one a screening cannot miss)."""
    c = cls.lower()
    return "tuberc" in c or c in ("tb", "tbc")


def class_html(cls: str) -> str:
    """A class name as escaped HTML, highlighted when `is_highlight`."""
    return f'<span class="hl">{html.esc(cls)}</span>' if is_highlight(cls) else html.esc(cls)


class Figures:
    """Makes each figure in isolation: one failing plot becomes a note in the page, not a crash.

    Figures go to `out`/figures/NAME.png and are shown by a relative link; `log` gets one line
    per figure that could not be drawn."""

    def __init__(self, out: Path, log: Log = log_to_stderr):
        self.log, self.dir = log, Path(out) / FIG_DIR
        self.dir.mkdir(parents=True, exist_ok=True)

    def make(self, name: str, caption: str, fn, *args, **kw) -> str:
        """HTML of the figure `fn(*args, path=..., **kw)` draws (a `report.plots` function),
        or of a note saying why it could not be drawn."""
        path = self.dir / f"{name}.png"
        try:
            fn(*args, path=path, **kw)
        except Exception as exc:  # a report with a missing figure beats no report
            msg = f"figure '{name}' could not be drawn: {type(exc).__name__}: {exc}"
            self.log(msg)
            return html.para(msg[:400], "note")
        return html.figure(f"{FIG_DIR}/{name}.png", caption)


# ---------------------------------------------------------------- the page


def render_sections(steps: list[tuple[str, Callable[[], str] | None]], log: Log) -> list[str]:
    """HTML of each (name, thunk) step in order; a None thunk is skipped, and a step that
    raises becomes a one-line note (and a `log` line): a report with one section missing
    beats no report."""
    body = []
    for name, fn in steps:
        if fn is None:
            continue
        try:
            body.append(fn())
        except Exception as exc:
            msg = f"section '{name}' failed: {type(exc).__name__}: {exc}"
            log(msg)
            body.append(html.para(msg[:400], "note"))
    return body


def write_page(out: Path, title: str, body: list[str], files: str) -> Path:
    """`out`/report.html, written atomically: `body` (HTML parts) then a line naming the
    `files` beside the page. Returns the path."""
    page = html.page(title, "".join(body) + html.para(f"Files beside this page: {files}.", "meta"))
    return write_atomic(Path(out) / "report.html", page)


# ---------------------------------------------------------------- test cases shown as images


def pick_cases(y, pred, conf, k: int, n_correct: int, n_wrong: int) -> tuple[list, list]:
    """Indices of class-k cases: the most confident correct ones, the most confident wrong.

    y, pred: int (N,) true and predicted classes; conf: float (N,) the predicted class's
    probability. Returns (up to n_correct indices, up to n_wrong indices), most confident first."""
    idx = np.flatnonzero(y == k)
    right = sorted(idx[pred[idx] == k], key=lambda i: -conf[i])
    wrong = sorted(idx[pred[idx] != k], key=lambda i: -conf[i])
    return [int(i) for i in right[:n_correct]], [int(i) for i in wrong[:n_wrong]]


def case_title(classes: list[str], t: int, p: int, prob: float) -> str:
    """A case's two-line title: its true class, then the predicted class and its probability."""
    return f"true {classes[t][:12]}\npred {classes[p][:12]} {prob:.2f}"


def image_case(images: np.ndarray, i: int, y, pred, conf, classes: list[str]) -> dict:
    """Case `i` as `report.plots` draws it: {"image": uint8 (S, S), "correct", "title"}."""
    return {
        "image": images[i],
        "correct": pred[i] == y[i],
        "title": case_title(classes, y[i], pred[i], conf[i]),
    }


def samples_section(
    figs: Figures, heading: str, caption: str, classes: list[str], y, prob, images
) -> str:
    """A grid of cases, one row of 4 per true class: up to 2 mistakes first, then the most
    confident correct cases, then more mistakes when the class has too few correct ones.

    y: int (N,) true classes; prob: float (N, K) probabilities; images: uint8 (N, S, S)."""
    pred, conf = prob.argmax(1), prob.max(1)
    cases = []
    for k in range(len(classes)):
        right, wrong = pick_cases(y, pred, conf, k, 4, 4)
        idx = (wrong[:2] + right + wrong[2:])[:4]  # <= 2 mistakes unless there is nothing else
        cases += [image_case(images, i, y, pred, conf, classes) for i in idx]
        cases += [None] * (4 - len(idx))
    return html.section(
        heading, figs.make("samples", caption, plots.sample_grid, cases, 4), anchor="samples"
    )


# ---------------------------------------------------------------- Grad-CAM


def input_size(record: dict) -> tuple[int, int]:
    """(img_size in px, in_chans) of a model record."""
    from ..checkpoint import preprocess

    pre = preprocess(record)
    return pre["img_size"], pre["in_chans"]


def gradcam_model(records: list[dict]):
    """(index into `records`, model, (h, w) of its Grad-CAM map) of the first convolutional
    record whose Grad-CAM layer is at least 2x2 (a 1x1 map, e.g. resnet18 at 32 px, is flat);
    failing that the first convolutional one at all; None without one (lstm, vit)."""
    from ..gradcam import cam_resolution, supports_gradcam
    from ..inference import model_from_record

    fallback = None
    for i, record in enumerate(records):
        model = model_from_record(record)
        if not supports_gradcam(model):
            continue
        res = cam_resolution(model, *input_size(record))
        if res and min(res) >= 2:
            return i, model, res
        fallback = fallback or (i, model, res)
    return fallback


def cam_cases(model, record: dict, images, idx: list[int], y, pred, conf, classes) -> list[dict]:
    """Cases `idx` with their Grad-CAM maps ("map": float (S, S) in [0, 1]) for the predicted
    class, the images fed as the record's model saw them in training (on the CPU).

    images: uint8 (N, S, S) at the record's input size; y, pred: int (N,); conf: float (N,)."""
    import torch

    from ..gradcam import grad_cam
    from ..inference import record_feed

    feed = record_feed(record, torch.device("cpu"))
    maps = grad_cam(model, feed(torch.from_numpy(images[idx])), torch.as_tensor(pred[idx]))
    cases = [image_case(images, i, y, pred, conf, classes) for i in idx]
    for case, cam in zip(cases, maps, strict=True):
        case["correct"] = bool(case["correct"])
        case["map"] = cam
    return cases


def gradcam_caption_tail(res) -> str:
    """What a caption adds when the Grad-CAM layer is 1x1 at this input size ("" otherwise)."""
    if res and min(res) < 2:
        return " At this image size the layer is 1x1, so the maps carry no spatial information."
    return ""


# ---------------------------------------------------------------- figures of probabilities


def confusion_section(figs: Figures, heading: str, caption: str, matrices, classes) -> str:
    """Confusion matrices side by side: matrices is [(title, int (K, K) counts, rows = true)]."""
    return html.section(
        heading,
        figs.make("confusion", caption, plots.confusion_matrices, matrices, classes),
        anchor="confusion",
    )


def roc_section(figs: Figures, caption: str, y, prob, classes: list[str], title: str) -> str:
    """One-vs-rest ROC and precision-recall curves per class of float (N, K) `prob` against
    int (N,) labels `y`."""
    return html.section(
        "ROC and precision-recall curves",
        figs.make("roc_pr", caption, plots.roc_pr, y, prob, classes, title=title),
        anchor="roc",
    )


def calibration_section(figs: Figures, caption: str, panels: list[tuple]) -> str:
    """Reliability diagrams: panels is [(title, `calibration.reliability_bins(...)`, ECE)]."""
    return html.section(
        "Calibration",
        figs.make("reliability", caption, plots.reliability, panels),
        anchor="calibration",
    )


def training_curves_section(
    figs: Figures, caption: str, curves: list[dict], metric: str, anchor: str | None
) -> str:
    """ "Training curves": per epoch training loss, validation loss and `metric` of each curve
    ({"label", "highlight", "epoch", "train_loss", "val_loss", metric: lists})."""
    return html.section(
        "Training curves",
        figs.make("training_curves", caption, plots.learning_curves, curves, metric),
        anchor=anchor,
    )


# Tables of the sweep's and the fold ensemble's reports ------------------------------------


OPERATING_HEADERS = [
    "class",
    "name",
    "target on validation",
    "threshold",
    "log-odds",
    "val sensitivity",
    "val specificity",
    "test sensitivity [95% CI]",
    "test specificity [95% CI]",
]


def threshold_text(t) -> str | None:
    """Enough digits to tell thresholds near 0 or 1 apart (0.999962, 3.1e-05), not '0.000'."""
    if t is None or not math.isfinite(t):
        return None
    return html.Shown(f"{t:.3g}" if 0 < t < 1e-3 else f"{t:.6g}")


def operating_rows(entry: dict, classes: list[str]) -> list[list]:
    """One row per class and operating point of a metrics.json entry (a member, an ensemble, a
    fold ensemble): `OPERATING_HEADERS`' columns."""
    rows = []
    for c in classes:
        for name, r in entry["operating_points"][c].items():
            test = r.get("test") or {}
            sens, spec = test.get("sensitivity") or {}, test.get("specificity") or {}
            kind = r.get("kind", "specificity")
            rows.append(
                [
                    c,
                    name,
                    f"{kind} >= {r.get('target', float(name[-4:])):.2f}",
                    threshold_text(r["threshold"]),
                    r.get("threshold_logit"),
                    r["val_sensitivity"],
                    r["val_specificity"],
                    html.ci(r["test_sensitivity"], sens.get("ci")),
                    html.ci(r["test_specificity"], spec.get("ci")),
                ]
            )
    return rows


def interval_rows(t: dict, classes: list[str]) -> list[list]:
    """Per class of a metrics.json "test" entry: sensitivity, specificity and precision with
    their Wilson intervals and k/n, ROC-AUC with its bootstrap interval, PR-AP:
    `INTERVAL_HEADERS`' columns."""
    iv = t["intervals"]
    boot = iv["bootstrap"]
    rows = []
    for c in classes:
        pc = iv["per_class"][c]
        rows.append(
            [c, t["support"][c]]
            + [
                cell
                for kind in ("sensitivity", "specificity", "precision")
                for cell in (
                    html.ci(pc[kind]["value"], pc[kind]["ci"]),
                    f"{pc[kind]['k']}/{pc[kind]['n']}",
                )
            ]
            + [html.ci(t["auc_per_class"][c], boot["auc_per_class"].get(c)), t["pr_ap"][c]]
        )
    return rows


INTERVAL_HEADERS = [
    "class",
    "test n",
    "sensitivity [95% CI]",
    "k/n",
    "specificity [95% CI]",
    "k/n",
    "precision [95% CI]",
    "k/n",
    "ROC-AUC [95% CI]",
    "PR-AP",
]
