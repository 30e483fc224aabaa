"""Fine-tuning interventions and their summary over seeds (METHOD.md steps 6
and 7; each fine-tuned model is scored by ``failmap.evaluation``).

Arms: ``none`` (the control: same schedule on train only), the generated
arms (``generic``, ``caption``, ``direction``: train plus that arm's decoded
images) and the pool-filtering arms (train plus K pool images per class
chosen by ``select_pool``; the pool's labels are used as true labels, as in
the reference). With ``modes.drive: modes`` the ``pool_svm`` arm picks by the
failure modes' scores instead, spread over each class's modes by share.

Same number of steps for every arm. ``epochs`` counts passes over the
*train split*: every arm takes ``epochs * ceil(n_train / batch_size)`` SGD
steps, drawing its batches from train plus its extra images. With "epochs
over its own data" an arm with extra images would also get more steps, and
part of any gain over ``none`` would be extra training rather than the extra
images. (That is also why this module has its own loop instead of
``failmap.train.fit``, whose step count follows the data size; the
optimiser and the one-cycle triangular schedule are the same.)

Last layer only (the reference's default). The body is frozen and kept in
eval mode, so its penultimate features of an image never change:
``FrozenFeatures`` computes them once per image set and the head is trained
on the cached features. That makes an arm x seed cost milliseconds instead
of a pass of the network over train for every step. The price: no data
augmentation (random crops and flips would change the features); the
whole-network mode has it as an option.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from failmap.models import load_classifier
from failmap.modes import spread
from failmap.schedules import triangle_schedule
from failmap.train import augment, to_tensor

CONTROL_ARM = "none"
GENERATED_ARMS = ("generic", "caption", "direction")
POOL_ARMS = ("pool_svm", "pool_random", "pool_confidence")
ARMS = (CONTROL_ARM,) + GENERATED_ARMS + POOL_ARMS
METRICS = ("test_acc", "hard_acc_gt", "easy_acc_gt", "hard_acc_svm", "easy_acc_svm")


# ------------------------------------------------------------ pool selection

@dataclass(frozen=True)
class PoolSelection:
    """Chosen pool indices (class by class, hardest first) and, per class name
    or index, why its choice differs from the arm's rule (fallbacks, short classes)."""
    indices: np.ndarray
    notes: dict[int, str]


def _class_rng(seed: int, k: int) -> np.random.Generator:
    # One stream per (seed, class): pool_random and pool_svm's fallback pick the
    # same images for a class, so the two arms differ only where the SVM decides.
    return np.random.default_rng([int(seed), int(k)])


def _mode_picks(members: np.ndarray, scores: np.ndarray, shares: Sequence[float], take: int) -> np.ndarray:
    """Positions (into ``members``) of ``take`` pool images of one class, spread
    over its modes by share: mode j (largest share first) takes its quota of
    the highest mode-j scores not taken by an earlier mode."""
    quotas = spread(take, shares)
    chosen: list[int] = []
    free = np.ones(len(members), dtype=bool)
    for j, quota in enumerate(quotas):
        order = np.argsort(-scores[members, j], kind="stable")
        picks = [int(i) for i in order if free[i]][:quota]
        free[picks] = False
        chosen += picks
    return np.asarray(chosen, dtype=np.int64)


def select_pool(arm: str, pool_labels: np.ndarray, pool_svm_decision: np.ndarray | None,
                pool_confidence: np.ndarray | None, k: int, seed: int, pool_mode_scores: np.ndarray | None = None,
                mode_shares: dict[int, Sequence[float]] | None = None) -> PoolSelection:
    """K pool images per class for one pool arm.

    - ``pool_svm``: the K lowest SVM decision values of the class (hardest);
      a class without an SVM (NaN decision values) falls back to K random
      images, the choice that adds no information, recorded in ``notes``.
      Given ``pool_mode_scores`` ((N, max_modes), ``failmap.modes.mode_scores``)
      and ``mode_shares`` (class -> its modes' shares, largest first; what
      ``modes.drive: modes`` passes), the K are instead spread over the class's
      modes by share (``failmap.modes.spread``), each mode taking the images
      most like it; a class without modes falls back to random the same way;
    - ``pool_confidence``: the K lowest baseline confidences in the true class;
    - ``pool_random``: K uniformly random images of the class (seeded).

    A class with fewer than K pool images gives all of them (noted). Ties keep
    pool order.
    """
    if arm not in POOL_ARMS:
        raise ValueError(f"arm must be one of {POOL_ARMS}, got {arm!r}")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k}")
    labels = np.asarray(pool_labels)
    if labels.ndim != 1:
        raise ValueError(f"pool_labels must be 1-D, got shape {labels.shape}")
    by_modes = arm == "pool_svm" and pool_mode_scores is not None
    if by_modes:
        if mode_shares is None:
            raise ValueError("pool_mode_scores needs mode_shares (each class's mode shares, largest first)")
        mode_scores = np.asarray(pool_mode_scores, dtype=np.float64)
        if mode_scores.ndim != 2 or len(mode_scores) != len(labels):
            raise ValueError(f"pool_mode_scores must be ({len(labels)}, max_modes), got shape {mode_scores.shape}")
    score = {"pool_svm": pool_svm_decision, "pool_confidence": pool_confidence}.get(arm)
    if arm != "pool_random" and not by_modes:
        name = "pool_svm_decision" if arm == "pool_svm" else "pool_confidence"
        if score is None:
            raise ValueError(f"arm {arm!r} needs {name}")
        score = np.asarray(score, dtype=np.float64)
        if score.shape != labels.shape:
            raise ValueError(f"{name} must have shape {labels.shape} to match pool_labels, got {score.shape}")
        if arm == "pool_confidence" and not np.all(np.isfinite(score)):
            raise ValueError("pool_confidence contains NaN or infinite values")
    chosen, notes = [], {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(int(k), len(members))
        if take < k:
            notes[int(c)] = f"only {len(members)} pool images, fewer than k={k}: all taken"
        if by_modes:
            shares = list((mode_shares or {}).get(int(c), []))
            if not shares:
                notes[int(c)] = "no failure modes for this class: random images instead"
                order = _class_rng(seed, c).permutation(len(members))
            else:
                if not np.all(np.isfinite(mode_scores[members, :len(shares)])):
                    raise ValueError(f"pool_mode_scores of class {c} is NaN for some of its {len(shares)} modes: "
                                     f"re-run fit_svms")
                order = _mode_picks(members, mode_scores, shares, take)
        elif arm == "pool_svm" and not np.all(np.isfinite(score[members])):
            if np.any(np.isfinite(score[members])):
                raise ValueError(f"pool_svm_decision of class {c} is NaN for some images only: expected all "
                                 f"(class without an SVM) or none")
            notes[int(c)] = "no SVM for this class (NaN decision values): random images instead"
            order = _class_rng(seed, c).permutation(len(members))
        elif arm == "pool_random":
            order = _class_rng(seed, c).permutation(len(members))
        else:
            order = np.argsort(score[members], kind="stable")
        chosen.append(members[order[:take]])
    indices = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    return PoolSelection(indices=indices.astype(np.int64), notes=notes)


# ------------------------------------------------------------ frozen features

def _fingerprint(images: np.ndarray) -> str:
    a = np.ascontiguousarray(images)
    return hashlib.sha1(str((a.shape, a.dtype.str)).encode() + a.tobytes()).hexdigest()


class FrozenFeatures:
    """Penultimate features of one baseline classifier, computed once per image set.

    Keyed by a hash of the image bytes (cheap next to a forward pass), so the
    same train or test array passed for every arm and seed is embedded once.
    """

    def __init__(self, baseline_path: str | Path, device: str, batch_size: int = 512):
        self.baseline_path = Path(baseline_path)
        self.model, _ = load_classifier(self.baseline_path, device)
        self.device = device
        self.batch_size = int(batch_size)
        self._cache: dict[str, torch.Tensor] = {}
        self._body = {name: t.detach().clone() for name, t in self.model.state_dict().items()
                      if not name.startswith("fc.")}

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, F) on the CPU."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        key = _fingerprint(images)
        if key not in self._cache:
            self.model.eval()
            parts = [self.model.features(to_tensor(images[s:s + self.batch_size]).to(self.device)).float().cpu()
                     for s in range(0, len(images), self.batch_size)]
            self._cache[key] = torch.cat(parts) if parts else torch.zeros(0, self.model.fc.in_features)
        return self._cache[key]

    def body_matches(self, model: torch.nn.Module) -> bool:
        """True when ``model`` has this baseline's body (everything but ``fc``),
        i.e. the cached features are its features."""
        state = model.state_dict()
        if set(state) - {n for n in state if n.startswith("fc.")} != set(self._body):
            return False
        return all(torch.equal(state[n].detach().cpu(), t.cpu()) for n, t in self._body.items())


# ------------------------------------------------------------ fine-tuning

def finetune_steps(n_train: int, epochs: int, batch_size: int) -> int:
    """SGD steps every arm takes: ``epochs`` passes over the train split."""
    if n_train < 1 or epochs < 1 or batch_size < 1:
        raise ValueError(f"n_train, epochs and batch_size must be >= 1, got {n_train}, {epochs}, {batch_size}")
    return epochs * math.ceil(n_train / batch_size)


def _sgd(params, loss_of_batch, n: int, *, steps: int, batch_size: int, lr: float, momentum: float,
         weight_decay: float, seed: int, desc: str) -> list[float]:
    """``steps`` SGD steps (Nesterov momentum, one-cycle triangular LR, as
    ``failmap.train.fit``) over batches of a fresh permutation of n items per
    pass; returns the loss per step."""
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    sched = triangle_schedule(opt, steps)
    losses, order, pos = [], torch.randperm(n, generator=gen), 0
    for _ in tqdm(range(steps), desc=desc, mininterval=2, disable=steps < 200):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = loss_of_batch(idx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def _check_set(images: np.ndarray, labels: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{name}_images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"{name}_labels must have shape ({len(images)},) to match {name}_images, got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{name}_labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def finetune_arm(baseline_path: str | Path, train_images: np.ndarray, train_labels: np.ndarray,
                 extra_images: np.ndarray | None, extra_labels: np.ndarray | None, *, last_layer_only: bool,
                 epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float, seed: int,
                 device: str, augment_data: bool = False,
                 features: FrozenFeatures | None = None) -> torch.nn.Module:
    """A copy of the baseline fine-tuned on train plus ``extra`` (None or empty
    for the ``none`` arm) for ``finetune_steps(len(train), epochs, batch_size)``
    steps. ``last_layer_only`` trains ``fc`` on cached frozen features
    (``features``: a ``FrozenFeatures`` of the same baseline, shared by all
    arms and seeds; made here when None); otherwise the whole network, with
    batch-norm in train mode and optional augmentation."""
    if last_layer_only and augment_data:
        raise ValueError("augment_data needs last_layer_only=False: the last-layer mode trains on cached features "
                         "of the un-augmented images")
    torch.manual_seed(int(seed))
    model, ckpt = load_classifier(baseline_path, device)
    n_classes = int(ckpt["n_classes"])
    y_train = _check_set(train_images, train_labels, "train", n_classes)
    if extra_images is None or len(extra_images) == 0:
        extra_images = np.zeros((0,) + np.asarray(train_images).shape[1:], np.uint8)
        extra_labels = np.zeros(0, np.int64)
    y_extra = _check_set(extra_images, extra_labels, "extra", n_classes)
    if extra_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"extra images are {extra_images.shape[1:]} but train images {train_images.shape[1:]}")
    steps = finetune_steps(len(train_images), epochs, batch_size)
    y_all = torch.from_numpy(np.concatenate([y_train, y_extra]))
    hyper = dict(steps=steps, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed)

    if last_layer_only:
        if features is None:
            features = FrozenFeatures(baseline_path, device)
        elif features.baseline_path.resolve() != Path(baseline_path).resolve():
            raise ValueError(f"features were computed with {features.baseline_path}, not {baseline_path}")
        x_all = torch.cat([features(train_images), features(extra_images)])
        head = model.fc.cpu().float()
        head.train()
        _sgd(head.parameters(), lambda idx, gen: F.cross_entropy(head(x_all[idx]), y_all[idx]), len(y_all),
             desc="finetune head", **hyper)
        model.fc = head.to(device)
    else:
        x_all = torch.cat([to_tensor(train_images), to_tensor(extra_images)])
        model.train()

        def loss_of_batch(idx, gen):
            x = augment(x_all[idx], gen) if augment_data else x_all[idx]
            return F.cross_entropy(model(x.to(device)), y_all[idx].to(device))
        _sgd(model.parameters(), loss_of_batch, len(y_all), desc="finetune network", **hyper)
    return model.eval()


# ------------------------------------------------------------ summaries over seeds

def _mean_std(values: list[float | None]) -> dict:
    """Mean and sample std (ddof 1) over seeds; std None with one seed, both None without values."""
    vals = [v for v in values if v is not None]
    if len(vals) != len(values):
        if vals:
            raise ValueError(f"a metric is missing for some seeds only: {values}")
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": len(arr)}


def aggregate(results: Sequence[dict]) -> dict:
    """Per arm, mean and std over seeds of every metric in ``METRICS``, plus
    ``delta_vs_none``: each arm's mean minus the ``none`` arm's (when run).

    ``results``: one dict per (arm, seed) with keys arm, seed, n_extra and the
    metrics (``evaluate_model``'s output plus those three). Arms keep their
    first-seen order.
    """
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        for key in ("arm", "seed", "n_extra") + METRICS:
            if key not in r:
                raise ValueError(f"result {r.get('arm')!r}/{r.get('seed')!r} has no {key!r}")
        by_arm.setdefault(r["arm"], []).append(r)
    out: dict = {"arms": {}}
    for arm, rows in by_arm.items():
        seeds = [r["seed"] for r in rows]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"arm {arm!r} has duplicate seeds: {seeds}")
        n_extra = {int(r["n_extra"]) for r in rows}
        if len(n_extra) != 1:
            raise ValueError(f"arm {arm!r} has different n_extra across seeds: {sorted(n_extra)}")
        entry = {m: _mean_std([r[m] for r in rows]) for m in METRICS}
        entry.update(n_extra=n_extra.pop(), seeds=sorted(seeds))
        out["arms"][arm] = entry
    if CONTROL_ARM in out["arms"]:
        base = out["arms"][CONTROL_ARM]
        out["delta_vs_none"] = {
            arm: {m: (None if e[m]["mean"] is None or base[m]["mean"] is None else e[m]["mean"] - base[m]["mean"])
                  for m in METRICS}
            for arm, e in out["arms"].items() if arm != CONTROL_ARM}
    return out


def aggregate_by_mode(results: Sequence[dict]) -> dict:
    """``{class: {mode_j: {arm: {mean, std, n, delta_vs_none}}}}`` from one
    ``{"arm", "seed", "by_mode": evaluation.mode_accuracies(...)}`` per (arm,
    seed): each arm's mean and std over its seeds on the class's test images most
    like the mode, and its mean minus the control arm's where that ran."""
    values: dict = {}
    for r in results:
        for name, modes in r["by_mode"].items():
            for mode, acc in modes.items():
                values.setdefault(name, {}).setdefault(mode, {}).setdefault(r["arm"], []).append(acc)
    out: dict = {}
    for name, modes in values.items():
        for mode, arms in modes.items():
            entry = {arm: _mean_std(accs) for arm, accs in arms.items()}
            base = entry.get(CONTROL_ARM)
            for arm, e in entry.items():
                e["delta_vs_none"] = None if base is None or arm == CONTROL_ARM else e["mean"] - base["mean"]
            out.setdefault(name, {})[mode] = entry
    return out


def plot_rows(aggregated: dict, metric: str) -> list[dict]:
    """Rows {arm, mean, std} of one metric for ``dvc plots`` / ``plots.bar_plot``
    (arms without a value are left out; a missing std is written as 0)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return [{"arm": arm, "mean": e[metric]["mean"], "std": e[metric]["std"] or 0.0}
            for arm, e in aggregated["arms"].items() if e[metric]["mean"] is not None]
