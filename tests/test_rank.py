"""Tests for the transferability scores (LogME, LEEP, NCE) and ``rank`` (Python and CLI)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cnncodes import cli
from cnncodes.errors import UsageError
from cnncodes.workflows.rank import COLUMNS, rank
from cnncodes.workflows.transferability import leep, logme, nce, softmax
from tests.conftest import write_classes

# ----------------------------------------------------------------------------- LogME


def reference_logme(f, labels, iterations=20000):
    """LogME as the paper writes it, one class at a time, with d x d matrices (slow, direct):
    MacKay's updates gamma = sum beta s_i / (alpha + beta s_i), alpha = gamma / m'm,
    beta = (n - gamma) / |Fm - y|^2 with m = beta A^-1 F'y, A = alpha I + beta F'F, until they
    settle (or would lower the evidence); then the log-evidence over n, averaged over classes."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    ftf = f.T @ f
    eig = np.linalg.eigvalsh(ftf).clip(min=0)

    def evidence(alpha, beta, y):
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, f.T @ y)
        value = (
            n / 2 * np.log(beta)
            + d / 2 * np.log(alpha)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2)
            - alpha / 2 * (m @ m)
            - np.linalg.slogdet(a)[1] / 2
        )
        return value / n, m

    evidences = []
    for label in np.unique(labels):
        y = (np.asarray(labels) == label).astype(np.float64)
        alpha, beta = 1.0, 1.0
        best, m = evidence(alpha, beta, y)
        for _ in range(iterations):
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            if not (new_alpha > 0 and new_beta > 0):
                break
            new, new_m = evidence(new_alpha, new_beta, y)
            if new < best - 1e-13:
                break
            settled = abs(new - best) < 1e-14 or (
                abs(new_alpha - alpha) < 1e-12 * new_alpha
                and abs(new_beta - beta) < 1e-12 * new_beta
            )
            alpha, beta, best, m = new_alpha, new_beta, new, new_m
            if settled:
                break
        evidences.append(best)
    return float(np.mean(evidences))


def informative(n, d, classes, seed=0, noise=1.0):
    """Features of ``n`` images whose first columns carry the class, plus noise columns."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d))
    return centres[y] + noise * rng.normal(size=(n, d)), y


@pytest.mark.parametrize(
    "n, d, classes",
    [(30, 5, 3), (40, 1, 2), (12, 40, 3), (9, 9, 4), (25, 3, 5)],
    ids=["n>d", "one-feature", "d>n", "square", "five-classes"],
)
def test_logme_matches_the_slow_reference(n, d, classes):
    f, y = informative(n, d, classes, seed=n + d)
    assert logme(f, y) == pytest.approx(reference_logme(f, y), abs=1e-6)


def test_logme_is_invariant_to_label_names_and_image_order():
    f, y = informative(30, 6, 3)
    renamed = np.array(["c", "a", "b"])[y]  # another name for each class, in another order
    assert logme(f, renamed) == pytest.approx(logme(f, y), abs=1e-12)
    order = np.random.default_rng(1).permutation(30)
    assert logme(f[order], y[order]) == pytest.approx(logme(f, y), abs=1e-9)


def test_logme_with_more_features_than_images_still_ranks():
    f, y = informative(16, 60, 2, noise=0.5)
    noise = np.random.default_rng(2).normal(size=(16, 60))
    good, bad = logme(f, y), logme(noise, y)
    assert np.isfinite(good) and np.isfinite(bad)
    assert good > bad
    assert good == pytest.approx(reference_logme(f, y), abs=1e-6)


def test_logme_with_a_constant_feature():
    f, y = informative(20, 4, 2, noise=0.3)
    with_constant = np.c_[f, np.full(20, 3.0)]
    assert logme(with_constant, y) == pytest.approx(reference_logme(with_constant, y), abs=1e-6)
    only_constant = np.full((20, 3), 2.0)  # rank one: nothing tells the classes apart
    assert np.isfinite(logme(only_constant, y))
    # A constant acts as the model's bias (LogME has none of its own): it fits the class
    # frequencies, and the codes that tell the classes apart add to it.
    assert logme(only_constant, y) < logme(with_constant, y)
    assert np.isfinite(logme(np.zeros((20, 3)), y))  # all-zero codes: finite, not NaN


def test_logme_refuses_one_class_and_bad_shapes():
    f, _ = informative(10, 3, 2)
    with pytest.raises(UsageError, match="at least two classes"):
        logme(f, np.zeros(10))
    with pytest.raises(UsageError, match="10 rows but labels"):
        logme(f, np.arange(9) % 2)
    with pytest.raises(UsageError, match="NaN"):
        logme(np.where(f > 0, np.nan, f), np.arange(10) % 2)


def test_logme_prefers_codes_that_separate_the_classes():
    f, y = informative(60, 8, 3, noise=0.3)
    blurred, _ = informative(60, 8, 3, noise=3.0)
    assert logme(f, y) > logme(blurred, y)


# ----------------------------------------------------------------------------- LEEP, NCE


def test_leep_by_hand():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = ["ant", "ant", "bee", "bee"]
    # Joint P(y, z): ant (1.4/4, 0.6/4), bee (0.4/4, 1.6/4); P(z) = (0.45, 0.55), so
    # P(y|z) = ant (7/9, 3/11), bee (2/9, 8/11).
    p_ant = [0.8 * 7 / 9 + 0.2 * 3 / 11, 0.6 * 7 / 9 + 0.4 * 3 / 11]
    p_bee = [0.3 * 2 / 9 + 0.7 * 8 / 11, 0.1 * 2 / 9 + 0.9 * 8 / 11]
    expected = np.mean(np.log(p_ant + p_bee))
    assert leep(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert leep(probs, labels) == pytest.approx(-0.471248, abs=1e-6)


def test_leep_refuses_what_is_not_a_distribution():
    with pytest.raises(UsageError, match="sum to 1"):
        leep([[2.0, 3.0], [1.0, 0.0]], [0, 1])
    with pytest.raises(UsageError, match="at least two classes"):
        leep([[0.5, 0.5], [0.5, 0.5]], [1, 1])


def test_nce_by_hand():
    # Z = 0 holds a, a, b (H = log 3 - 2/3 log 2), Z = 1 holds b: P(Z=0) = 3/4.
    expected = -0.75 * (np.log(3) - 2 / 3 * np.log(2))
    assert nce([0, 0, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(expected, abs=1e-12)
    logits = np.array([[5.0, 0.0], [4.0, 1.0], [3.0, 2.0], [0.0, 9.0]])
    assert nce(softmax(logits), ["a", "a", "b", "b"]) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- rank()

TINY = {"resize": 40, "crop": 32}


@pytest.fixture
def photos(tmp_path):
    """Three classes of 6 images differing in brightness."""
    write_classes(str(tmp_path / "photos"), per_class=6, classes=("a", "b", "c"))
    return tmp_path / "photos"


def test_rank_scores_every_layer_and_pooling(photos, tmp_path):
    from cnncodes import load_dataset

    data = load_dataset(photos)
    candidates = [
        {"model": "tests.tiny_nets:tiny_cnn", "layers": ["conv2", "flatten"],
         "poolings": ["avg", "max"], **TINY},
        {"model": "tests.tiny_nets:one_conv_cnn", "layers": "2", **TINY},
    ]  # fmt: skip
    table = rank(data.paths, data.labels, candidates, per_class=4, cache_dir=tmp_path / "c",
                 num_workers=0, progress=False)  # fmt: skip
    assert tuple(table.columns) == COLUMNS
    # flatten is a vector: scored under the first pooling only.
    assert sorted(zip(table.layer, table.pooling)) == [
        ("2", "avg"), ("conv2", "avg"), ("conv2", "max"), ("flatten", "avg")
    ]  # fmt: skip
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert table["logme"].is_monotonic_decreasing
    assert (table["n_images"] == 12).all() and table.attrs["n_images"] == 18
    assert table["leep"].notna().all() and (table["leep"] <= 0).all()
    assert (table["estimated_seconds"] > table["seconds_per_image"]).all()
    assert dict(zip(table.layer, table.width))["conv2"] == 16


def test_rank_refuses_bad_candidates(photos):
    from cnncodes import load_dataset

    data = load_dataset(photos)
    with pytest.raises(UsageError, match="unknown keys \\['layer'\\]"):
        rank(data.paths, data.labels, [{"model": "resnet18", "layer": "layer1"}])
    with pytest.raises(UsageError, match="at least one candidate"):
        rank(data.paths, data.labels, [])
    with pytest.raises(UsageError, match="at least two classes"):
        rank(data.paths[:6], ["a"] * 6, ["tests.tiny_nets:tiny_cnn"])
    with pytest.raises(UsageError, match="per_class=1"):
        rank(data.paths, data.labels, ["tests.tiny_nets:tiny_cnn"], per_class=1)


# ----------------------------------------------------------------------------- CLI

CLI_MODELS = [
    "--model", "tests.tiny_nets:tiny_cnn", "--resize", "40", "--crop", "32", "--layer", "conv2",
    "--layer", "flatten", "--model", "tests.tiny_nets:one_conv_cnn", "--resize", "40",
    "--crop", "32", "--pooling", "max",
]  # fmt: skip


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_rank_json_and_report(capsys, photos, tmp_path):
    report = tmp_path / "rank-report"
    argv = ["rank", photos, *CLI_MODELS, "--cache-dir", tmp_path / "c", "--workers", "0"]
    code, out, err = run(capsys, *argv, "--json", "--report", report)
    assert code == 0, err
    data = json.loads(out)
    assert {"n_images", "n_scored", "n_classes", "seconds", "rows", "report"} <= set(data)
    assert data["n_images"] == 18
    assert set(data["rows"][0]) == set(COLUMNS)
    # Options attach to the --model before them: tiny_cnn's two layers with the default
    # pooling; one_conv_cnn's default layers, max-pooled.
    rows = {}
    for row in data["rows"]:
        rows.setdefault(row["candidate"], []).append((row["layer"], row["pooling"]))
    assert sorted(rows["tests.tiny_nets:tiny_cnn"]) == [("conv2", "avg"), ("flatten", "avg")]
    assert {p for _, p in rows["tests.tiny_nets:one_conv_cnn"]} == {"max"}
    assert len(rows["tests.tiny_nets:one_conv_cnn"]) >= 2
    assert sorted(os.listdir(report)) == ["rank.json", "rank.png"]
    assert json.loads((report / "rank.json").read_text())["rows"] == data["rows"]
    # The table, and a second report replacing the first.
    code, out, err = run(capsys, *argv, "--report", report)
    assert code == 0, err
    assert "LogME" in out and "conv2" in out and "all images" in out
    assert sorted(os.listdir(report)) == ["rank.json", "rank.png"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--weights", "none", "--model", "resnet18"], "before any --model"),
        (["--model", "resnet18", "--pooling", "bogus"], "invalid choice"),
        (["--model", "resnet18", "--weights", "none", "--weights", "x"], "given twice"),
        ([], "at least one --model"),
        (["--model", "tests.tiny_nets:tiny_cnn", "--per-class", "1"], "--per-class"),
    ],
)
def test_cli_rank_bad_options_exit_2(capsys, photos, tmp_path, args, fragment):
    code, _, err = run(capsys, "rank", photos, *args, "--cache-dir", tmp_path / "c")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("cnncodes: error: ")
    assert fragment in err and "Traceback" not in err


def test_cli_rank_report_folder_with_other_files_is_refused_before_work(capsys, photos, tmp_path):
    report = tmp_path / "mine"
    report.mkdir()
    (report / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "rank", photos, *CLI_MODELS, "--report", report)
    assert code == 2 and "notes.txt" in err
    assert (report / "notes.txt").read_text() == "keep me"
