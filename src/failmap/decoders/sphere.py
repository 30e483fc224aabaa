"""Geometry on the unit sphere of a CLIP embedding space (numpy only).

failmap hands unit vectors around: decoders are trained on unit image
embeddings, and every conditioning vector the pipeline builds (a class
reference moved towards an SVM direction) must stay on the sphere, hence
great-circle moves (``slerp``, ``rotate_towards``) rather than straight lines.
``check_embeds`` is what every decoder runs on its input before any work.
"""
from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray, name: str = "embeds") -> np.ndarray:
    """Rows of a (N, D) or (D,) float array scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms < 1e-12):
        raise ValueError(f"{name} has an all-zero vector: it has no direction to normalise")
    return x / norms


def slerp(a: np.ndarray, b: np.ndarray, alpha) -> np.ndarray:
    """Spherical interpolation from ``a`` (alpha 0) to ``b`` (alpha 1).

    ``a`` and ``b`` are normalised first; shapes (D,) or (N, D) broadcast, and
    ``alpha`` is a scalar or one value per row. Moving along the great circle
    keeps every intermediate vector at unit norm, the norm the decoders were
    trained on (a straight line would cut through the sphere's inside). Used
    to walk from a class's reference embedding towards an SVM direction.
    """
    a, b = normalize(a, "a"), normalize(b, "b")
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.ndim == 1:
        alpha = alpha[:, None]
    cos = np.clip(np.sum(a * b, axis=-1, keepdims=True), -1.0, 1.0)
    if np.any(cos < -1.0 + 1e-6):
        raise ValueError("slerp between opposite vectors is undefined (every great circle joins them)")
    omega = np.arccos(cos)
    sin = np.sin(omega)
    # nearly parallel: the great-circle weights are 0/0; a straight line is exact enough there
    tiny = sin < 1e-6
    safe = np.where(tiny, 1.0, sin)
    wa = np.where(tiny, 1.0 - alpha, np.sin((1.0 - alpha) * omega) / safe)
    wb = np.where(tiny, alpha, np.sin(alpha * omega) / safe)
    return normalize(wa * a + wb * b, "slerp result")


def rotate_towards(a: np.ndarray, b: np.ndarray, angle) -> np.ndarray:
    """Unit ``a`` turned by ``angle`` radians along the great circle towards ``b``.

    Unlike ``slerp``, the distance travelled is given in radians, not as a
    share of the angle between ``a`` and ``b``: a direction far from every
    image embedding (an SVM normal) still takes ``a`` only as far as asked.
    ``a`` (N, D) or (D,), ``b`` (D,) or (N, D), ``angle`` a scalar or one per row."""
    a, b = normalize(a, "a"), normalize(b, "b")
    tangent = b - np.sum(a * b, axis=-1, keepdims=True) * a
    if np.any(np.linalg.norm(tangent, axis=-1) < 1e-6):
        raise ValueError("rotate_towards a parallel vector is undefined (no great circle is singled out)")
    tangent = normalize(tangent, "tangent")
    angle = np.asarray(angle, dtype=np.float32)
    if angle.ndim == 1:
        angle = angle[:, None]
    return normalize(np.cos(angle) * a + np.sin(angle) * tangent, "rotated")


def angles_towards(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) signed angle (radians) of each row of ``x`` along the great circle
    from ``a`` towards ``b``: positive on ``b``'s side of ``a``, measured in
    the plane of ``a`` and ``b`` (the other components of ``x`` ignored)."""
    x, a, b = normalize(x, "x"), normalize(a, "a"), normalize(b, "b")
    tangent = normalize(b - float(a @ b) * a, "tangent")
    return np.arctan2(x @ tangent, x @ a)


def check_embeds(embeds: np.ndarray, dim: int, name: str = "embeds") -> np.ndarray:
    """(N, dim) finite float array with no zero rows, returned unit-normalised."""
    embeds = np.asarray(embeds)
    if embeds.ndim != 2 or embeds.shape[1] != dim:
        raise ValueError(f"{name} must be (N, {dim}) vectors of the decoder's space, got shape {embeds.shape}")
    return normalize(embeds, name)
