"""Transferability scores of codes for a labelled target set, computed without training: LogME, LEEP, NCE.

- :func:`logme` (You, Liu, Wang, Long, ICML 2021): the maximum log-evidence per image of a
  Bayesian linear model of each class's one-vs-rest target on the codes, averaged over classes.
- :func:`leep` (Nguyen, Hassner, Seeger, Archambeau, ICML 2020): the mean log-likelihood of the
  target labels under the "expected empirical predictor" built from the source classifier's
  predicted distribution over its own classes.
- :func:`nce` (Tran, Nguyen, Hassner, ICCV 2019): the negative conditional entropy of the target
  label given the source classifier's predicted (hard) label.

Higher is better for all three; they compare candidates on the same images and labels only.
Written from the papers' equations with numpy (nothing here knows about networks or images).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

__all__ = ["logme", "leep", "nce", "softmax"]

#: MacKay's fixed-point iteration stops when alpha and beta change by less than this (relative).
LOGME_TOL = 1e-10
LOGME_MAX_ITER = 500
_TINY = 1e-300  # floors of quantities that are zero only in degenerate cases (all-zero codes)


def _classes(labels, n, what):
    """``(class index per row, number of classes)``, refusing fewer than two classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise UsageError(f"{what}: {n} rows but labels of shape {labels.shape}")
    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise UsageError(
            f"{what} needs labels of at least two classes, got {len(classes)} "
            f"({', '.join(map(repr, classes[:1].tolist()))}): a score of one class ranks nothing"
        )
    return index, len(classes)


def logme(features, labels):
    """LogME: the maximum log-evidence per image of a Bayesian linear model, averaged over classes.

    For each class ``k`` the model is ``y_k = F w + e`` with ``w ~ N(0, 1/alpha)`` and
    ``e ~ N(0, 1/beta)``, ``y_k`` the class's one-vs-rest (0/1) target; ``alpha`` and ``beta``
    maximise the evidence by MacKay's fixed-point updates, written over the singular values and
    left singular vectors of ``F`` (``n x d``, from the eigendecomposition of the smaller of
    ``F F^T`` and ``F^T F``), so that it costs ``O(n d min(n, d))`` once and then
    ``O(min(n, d))`` per update and class (every class is updated at once), and is exact with
    more features than images. Computed in float64.

    Parameters
    ----------
    features : array of shape (n_images, n_features)
        Codes of the target images.
    labels : array of shape (n_images,)
        Their classes (at least two).

    Returns
    -------
    float
        The mean over classes of the maximum log-evidence divided by the number of images.
        Higher means the codes suit the labels better (a linear model fits them with less
        noise and smaller weights).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> good = np.c_[y + 0.1 * rng.normal(size=40), rng.normal(size=(40, 3))]
    >>> bad = rng.normal(size=(40, 4))
    >>> bool(logme(good, y) > logme(bad, y))
    True
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise UsageError(
            f"logme: features of shape {f.shape}: expected (n_images >= 2, n_features)"
        )
    if not np.isfinite(f).all():
        raise UsageError("logme: the features hold NaN or infinite values")
    n, d = f.shape
    index, n_classes = _classes(labels, n, "logme")
    targets = (index[:, None] == np.arange(n_classes)).astype(np.float64)  # n x K
    sigma, z2 = _spectrum(f, targets)
    outside = np.maximum((targets**2).sum(0) - z2.sum(0), 0.0)  # |y|^2 off the span of F
    alpha, beta = np.ones(n_classes), np.ones(n_classes)
    evidence = _evidence(alpha, beta, sigma, z2, outside, n, d)
    active = np.ones(n_classes, dtype=bool)
    for _ in range(LOGME_MAX_ITER):
        gamma, mm, residual, _ = _logme_terms(alpha, beta, sigma, z2, outside)
        new_alpha = np.maximum(gamma, _TINY) / np.maximum(mm, _TINY)
        new_beta = np.maximum(n - gamma, _TINY) / np.maximum(residual, _TINY)
        new_evidence = _evidence(new_alpha, new_beta, sigma, z2, outside, n, d)
        # MacKay's updates raise the evidence. Where one lowers it, the class is at its best:
        # with as many features as images a noise-free fit (beta -> inf) is approached, and
        # near it rounding sends the updates astray. Where the codes carry no signal alpha
        # grows without bound while the evidence settles: stop on the evidence too.
        worse = new_evidence < evidence - 1e-13
        settled = (np.abs(new_evidence - evidence) <= LOGME_TOL * 1e-2) | (
            (np.abs(new_alpha - alpha) <= LOGME_TOL * new_alpha)
            & (np.abs(new_beta - beta) <= LOGME_TOL * new_beta)
        )
        move = active & ~worse
        alpha = np.where(move, new_alpha, alpha)
        beta = np.where(move, new_beta, beta)
        evidence = np.where(move, new_evidence, evidence)
        active &= ~worse & ~settled
        if not active.any():
            break
    return float(np.mean(evidence))


def _evidence(alpha, beta, sigma, z2, outside, n, d):
    """The log-evidence per image of each class's model at ``(alpha, beta)``."""
    _, mm, residual, logdet = _logme_terms(alpha, beta, sigma, z2, outside)
    logdet = logdet + (d - len(sigma)) * np.log(alpha)  # the d - r zero eigenvalues of F^T F
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * mm
        - logdet / 2
    )
    return evidence / n


def _spectrum(f, targets):
    """``(sigma, z2)``: the ``r = min(n, d)`` eigenvalues of ``F^T F`` (as an ``r x 1`` column;
    the other ``d - r`` are 0) and the targets' squared coordinates along the matching left
    singular vectors ``U`` of ``F`` (``r x K``), from the eigendecomposition of the smaller
    Gram matrix (``F F^T`` or ``F^T F``): a fraction of a thin SVD's time."""
    n, d = f.shape
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)  # the full basis of R^n: nothing lies outside it
        return np.maximum(sigma, 0.0)[:, None], (u.T @ targets) ** 2
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.maximum(sigma, 0.0)
    # U = F V / s; directions with s = 0 hold no part of any target (they are outside F's span).
    keep = sigma > sigma.max() * d * np.finfo(np.float64).eps
    projected = v.T @ (f.T @ targets)  # s_i (U^T y)_i
    z2 = np.zeros_like(projected)
    z2[keep] = projected[keep] ** 2 / sigma[keep, None]
    return sigma[:, None], z2


def _logme_terms(alpha, beta, sigma, z2, outside):
    """``(gamma, |m|^2, |F m - y|^2, log det of A over the SVD's r directions)`` per class, for
    the posterior mean ``m = beta A^-1 F^T y`` with ``A = alpha I + beta F^T F``."""
    denom = alpha + beta * sigma  # r x K
    gamma = (beta * sigma / denom).sum(0)
    mm = (beta**2 * sigma * z2 / denom**2).sum(0)
    residual = outside + (alpha**2 * z2 / denom**2).sum(0)
    return gamma, mm, residual, np.log(denom).sum(0)


def softmax(logits):
    """Row-wise softmax of ``logits`` (float64, shifted by each row's maximum).

    Examples
    --------
    >>> softmax(np.array([[0.0, 0.0], [np.log(3.0), 0.0]])).round(2).tolist()
    [[0.5, 0.5], [0.75, 0.25]]
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _check_probabilities(probs, what):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < 1:
        raise UsageError(f"{what}: probabilities of shape {probs.shape}: expected 2-D")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise UsageError(f"{what}: probabilities must be finite and non-negative")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise UsageError(
            f"{what}: each row of probabilities must sum to 1 (softmax the logits first: "
            "cnncodes.workflows.transferability.softmax)"
        )
    return probs


def leep(probs, labels):
    """LEEP: the mean log-likelihood of the target labels under the expected empirical predictor.

    With ``theta(x)`` the source classifier's distribution over its own classes ``z``, the
    empirical joint ``P(y, z) = mean_i theta(x_i)_z [y_i = y]`` gives ``P(y | z)``; the predictor
    is ``p(y | x) = sum_z P(y | z) theta(x)_z`` and LEEP is ``mean_i log p(y_i | x_i)`` (at most 0).

    Parameters
    ----------
    probs : array of shape (n_images, n_source_classes)
        The source classifier's predicted probabilities (rows sum to 1).
    labels : array of shape (n_images,)
        The target classes (at least two).

    Examples
    --------
    >>> round(leep([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], ["a", "a", "b", "b"]), 6)
    0.0
    """
    probs = _check_probabilities(probs, "leep")
    index, n_classes = _classes(labels, len(probs), "leep")
    onehot = (index[:, None] == np.arange(n_classes)).astype(np.float64)
    joint = onehot.T @ probs / len(probs)  # K x Z
    source = joint.sum(axis=0)  # P(z)
    conditional = np.divide(joint, source, out=np.zeros_like(joint), where=source > 0)
    expected = (probs * conditional[index]).sum(axis=1)
    return float(np.mean(np.log(np.maximum(expected, _TINY))))


def nce(source, labels):
    """NCE: the negative conditional entropy ``-H(Y | Z)`` of the target label ``Y`` given the
    source classifier's predicted label ``Z`` (at most 0; 0 when ``Z`` determines ``Y``).

    Parameters
    ----------
    source : array of shape (n_images,) or (n_images, n_source_classes)
        The source classifier's predicted labels, or its probabilities or logits (the argmax
        of each row is taken).
    labels : array of shape (n_images,)
        The target classes (at least two).

    Examples
    --------
    >>> nce([0, 0, 1, 1], ["a", "a", "b", "b"])
    0.0
    >>> round(nce([0, 0, 0, 0], ["a", "a", "b", "b"]), 4)  # -log 2
    -0.6931
    """
    source = np.asarray(source)
    if source.ndim == 2:
        source = source.argmax(axis=1)
    if source.ndim != 1:
        raise UsageError(f"nce: source of shape {source.shape}: expected 1-D labels or 2-D scores")
    index, n_classes = _classes(labels, len(source), "nce")
    _, z = np.unique(source, return_inverse=True)
    joint = np.zeros((n_classes, z.max() + 1))
    np.add.at(joint, (index, z), 1.0)
    joint /= len(z)
    marginal = joint.sum(axis=0, keepdims=True)
    present = joint > 0
    conditional = joint[present] / np.broadcast_to(marginal, joint.shape)[present]
    return float(np.sum(joint[present] * np.log(conditional)))
