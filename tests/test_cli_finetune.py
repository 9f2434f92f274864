"""Tests for `cnncodes finetune` and `cnncodes predict` of a fine-tuned model, run through main()."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from cnncodes.datasets import load_dataset

from cnncodes import cli, persistence
from tests.conftest import paused_after_two_epochs
from tests.test_cli import assert_one_line_error, run, run_json

TINY = [
    "--model", "tests.tiny_nets:tiny_cnn", "--resize", "32", "--crop", "32", "--num-workers", "0"
]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def finetune(capsys, root, *extra, model=TINY):
    return run(
        capsys, "finetune", root / "photos", *model, "--cache-dir", root / "cache",
        "--epochs", "2", *extra,
    )  # fmt: skip


def test_help_has_examples(capsys):
    code, out, _ = run(capsys, "finetune", "--help")
    assert code == 0
    assert "examples:" in out and "cnncodes finetune photos/" in out and "--resume" in out
    code, out, _ = run(capsys, "--help")
    assert "finetune" in out


def test_epochs_on_stderr_and_test_metrics_under_fits_json_keys(capsys, photos):
    code, out, err = finetune(
        capsys, photos, "--test", photos / "test", "--freeze", "conv1", "--lr", "0.01", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["command"] == "finetune" and data["freeze"] == "conv1"
    test = data["metrics"]["test"]
    assert test["n"] == 6 and 0 <= test["accuracy"] <= 1
    assert set(test["per_class"]) == {"bright", "dark"} and test["labels"] == ["bright", "dark"]
    assert [row["epoch"] for row in data["history"]] == [1, 2]
    assert {"train_loss", "valid_loss", "valid_acc", "dur"} <= set(data["history"][0])
    assert data["metrics"]["history"] == data["history"]
    assert data["train_images"] == 14  # 16 images, ceil(0.1 * 16) = 2 held out for validation
    assert data["images_per_second"] > 0 and data["epoch_seconds"] > 0
    assert data["trunk_cached"] is False  # crop-flip augmentation: new views every epoch
    assert data["out"] is None and data["resumed"] is False
    # skorch's epoch lines (header, one row per epoch) go to stderr, not into the JSON.
    epoch_rows = [line.split() for line in err.splitlines() if line.strip()[:1].isdigit()]
    assert "train_loss" in err and "valid_acc" in err and len(epoch_rows) >= 2
    assert "a killed run cannot resume" in err

    # Without augmentation the frozen part's activations come from the code cache.
    code, out, err = finetune(
        capsys, photos, "--test", photos / "test", "--freeze", "conv1", "--augment", "none"
    )
    assert code == 0, err
    assert "the frozen layers' activations came from the code cache" in out
    assert "test (" in out and "6 images): accuracy" in out and "precision" in out


def test_report_files_and_the_command_that_reproduces_the_run(capsys, photos):
    from cnncodes.evaluation import stratified_split

    from cnncodes.workflows.rundata import _data_fingerprint

    report = photos / "report"
    code, out, err = finetune(
        capsys, photos, "--test-size", "0.25", "--freeze", "none", "--seed", "5",
        "--random-state", "3", "--report", report,
    )  # fmt: skip
    assert code == 0, err
    assert f"report: {report}" in out
    for name in ("training_curves.png", "confusion_matrix.png"):
        assert (report / name).read_bytes().startswith(PNG), name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["test"]["n"] == 4 and len(metrics["history"]) == 2
    config = json.loads((report / "config.json").read_text())
    assert config["params"]["freeze"] == "none" and config["extractor"]["model"] == TINY[1]
    # The held-out quarter is the one `cnncodes fit --test-size 0.25` holds out (same
    # --random-state; --seed is the network's).
    dataset = load_dataset(photos / "photos")
    *_, test_paths, test_labels = stratified_split(dataset.paths, dataset.labels, 0.25, 3)
    assert config["test"]["sha256"] == _data_fingerprint(test_paths, test_labels)
    # The recorded command parses back to this run's settings.
    argv = shlex.split(config["command"])
    assert argv[:3] == ["cnncodes", "finetune", str(photos / "photos")]
    again = cli.build_parser().parse_args(argv[1:])
    assert (again.freeze, again.epochs, again.test_size) == ("none", 2, 0.25)
    assert (again.seed, again.random_state) == (5, 3)
    assert (again.resize, again.crop, again.cache_dir) == (32, 32, str(photos / "cache"))
    assert not (report / "finetune.state").exists()  # removed once the run completed


def test_saved_model_predicts_with_trust_rules_as_for_fit(capsys, photos):
    model = photos / "ft.skops"
    code, out, err = finetune(capsys, photos, "--out", model)
    assert code == 0, err
    assert "predict with --trust-model-code tests.tiny_nets:tiny_cnn" in out
    assert model.is_file() and not (photos / "ft.skops.state").exists()

    code, out, err = run(capsys, "predict", model, photos / "test", "--num-workers", "0")
    assert code == 2
    assert_one_line_error(err, "tests.tiny_nets:tiny_cnn", "--trust-model-code")

    table_path = photos / "predictions.csv"
    code, out, err = run(
        capsys, "predict", model, photos / "test", "--trust-model-code", TINY[1], "--proba",
        "--out", table_path, "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(table_path)
    assert list(table.columns) == [
        "path", "label", "score", "score_kind", "true_label", "proba_bright", "proba_dark",
    ]  # fmt: skip
    assert len(table) == 6 and (table["score_kind"] == "probability").all()
    fitted = persistence.load(model, trust_model_code=True)
    expected = fitted.predict_proba(list(table["path"]))
    np.testing.assert_allclose(table[["proba_bright", "proba_dark"]], expected, atol=1e-6)
    np.testing.assert_array_equal(table["label"], fitted.classes_[expected.argmax(1)])
    assert "accuracy on 6 labelled image(s):" in out


def test_fine_tuned_model_needs_not_its_starting_checkpoint(capsys, photos):
    from cnncodes.demo_data import digits_net

    torch.manual_seed(3)
    weights = photos / "net.pth"
    torch.save(digits_net().state_dict(), weights)
    digits = ["--model", "cnncodes.demo_data:digits_net", "--weights", weights, "--resize", "32",
              "--crop", "32", "--mean", "0.5", "--std", "0.5", "--num-workers", "0"]  # fmt: skip
    model = photos / "ft.joblib"
    code, out, err = finetune(
        capsys, photos, "--freeze", "features.3", "--out", model, model=digits
    )
    assert code == 0, err
    weights.unlink()  # the fine-tuned weights are in the model file
    broken = photos / "new" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    good = sorted(str(p) for p in (photos / "test" / "dark").iterdir())
    data = run_json(
        capsys, "predict", model, *good, broken, "--on-error", "skip", "--num-workers", "0"
    )
    rows = data["predictions"]
    assert [r["path"] for r in rows] == [*good, str(broken)]
    assert all(r["label"] in ("bright", "dark") for r in rows[:-1])
    assert rows[-1]["label"] is None and rows[-1]["error"] and data["skipped"] == 1
    code, out, err = run(capsys, "predict", model, broken, "--num-workers", "0")
    assert code == 2
    assert_one_line_error(err, "broken.jpg", "--on-error skip")
    code, out, err = run(
        capsys, "predict", model, *good, "--weights", photos / "elsewhere.pth", "--num-workers", "0"
    )
    assert code == 0, err
    assert "not needed" in err


def test_checkpoint_of_the_fine_tuned_network_feeds_extract(capsys, photos):
    checkpoint, model = photos / "ft.pth", photos / "ft.skops"
    code, out, err = finetune(
        capsys, photos, "--freeze", "conv1", "--lr", "0.05", "--save-checkpoint", checkpoint,
        "--out", model,
    )  # fmt: skip
    assert code == 0, err
    assert f"saved checkpoint: {checkpoint}" in out
    codes_file = photos / "codes.npz"
    data = run_json(
        capsys, "extract", photos / "photos", "--model", TINY[1], "--weights", checkpoint,
        "--cache-dir", photos / "cache", "--num-workers", "0", "--out", codes_file,
    )  # fmt: skip
    assert data["weights"].startswith("sha256:") and data["computed"] == 16
    assert data["preprocessing"]["crop"] == [32, 32]  # from the checkpoint
    saved = np.load(codes_file)
    paths = [os.fsdecode(p) for p in saved["paths"]]
    head = torch.load(checkpoint, weights_only=True)["finetune"]["head"]
    logits = torch.as_tensor(saved["codes"]) @ head["1.weight"].T + head["1.bias"]
    fitted = persistence.load(model, trust_model_code=True)
    np.testing.assert_allclose(torch.softmax(logits, 1), fitted.predict_proba(paths), atol=1e-4)


def _command(argv):
    """Python code running ``cnncodes ARGV`` (in a child process)."""
    return f"from cnncodes import cli\nsys.exit(cli.main({[str(a) for a in argv]!r}))\n"


def test_a_killed_run_resumes_from_its_last_epoch(capsys, photos):
    model = photos / "ft.skops"
    state = photos / "ft.skops.state"
    settings = ["finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
                "--epochs", "4", "--freeze", "none", "--lr", "0.01", "--json"]  # fmt: skip
    straight = run_json(capsys, *settings)
    with paused_after_two_epochs(_command([*settings, "--out", model, "--quiet"])):
        pass  # killed (SIGKILL) on leaving the block
    assert state.is_file() and not model.exists()
    # The same command without --resume would overwrite the killed run's epochs: refused.
    code, out, err = run(capsys, *settings, "--out", model)
    assert code == 2
    assert_one_line_error(err, str(state), "--resume")
    resumed = run_json(capsys, *settings, "--out", model, "--resume")
    assert resumed["resumed"] is True
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [row["train_loss"] for row in resumed["history"]],
        [row["train_loss"] for row in straight["history"]],
        rtol=1e-5,
    )
    assert model.is_file() and not state.exists()


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--freeze", "conv3"], ["freeze='conv3' is not a node", "Closest: conv2, conv1"]),
        (["--resume"], ["--resume continues the state", "--out FILE", "--report DIR"]),
        (["--valid-size", "0.05"], ["valid_size=0.05 holds out 1 of 16 images", "at least"]),
        (["--save-checkpoint", "ft.txt"], ["--save-checkpoint 'ft.txt'", "unknown extension"]),
        (["--impl", "torch"], ["--impl torch", "leave --impl out"]),
        (["--lr", "0"], ["--lr", "'0': expected a positive number"]),
    ],
)
def test_bad_input_is_one_line_naming_it(capsys, photos, extra, fragments):
    code, out, err = finetune(capsys, photos, *extra)
    assert code == 2, err
    assert_one_line_error(err, *fragments)


def test_prediction_helpers_take_a_fine_tune(tmp_path, make_images):
    import dataclasses

    from cnncodes.experiment import predict_images, relocate_weights, set_runtime, verify_model
    from cnncodes.finetune import FineTune
    from cnncodes.models import ModelError

    paths = make_images(8)
    ft = FineTune(model=TINY[1], resize=32, crop=32, epochs=1, valid_size=0, cache_dir=None)
    ft.fit(paths, ["a", "b"] * 4)
    # Its weights are inside it: a checkpoint path (even a missing one) changes nothing.
    assert relocate_weights(ft, tmp_path / "missing.pth") is ft
    assert set_runtime(ft, batch_size=3, device="cpu").get_params()["batch_size"] == 3
    verify_model(ft)
    table = predict_images(ft, paths, labels=["a", "b"] * 4, proba=True)
    np.testing.assert_allclose(table[["proba_a", "proba_b"]], ft.predict_proba(paths), atol=1e-6)
    ft.spec_ = dataclasses.replace(ft.spec_, arch_id="0" * 16)  # as if tiny_cnn had changed
    with pytest.raises(ModelError, match="no longer builds the architecture"):
        predict_images(ft, paths)


def test_ctrl_c_stops_the_command_and_keeps_the_state(photos):
    # skorch ends training quietly on KeyboardInterrupt: the command must not then evaluate,
    # save the half-trained model as complete, or remove the state that --resume needs.
    model, state = photos / "ft.skops", photos / "ft.skops.state"
    argv = ["finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
            "--epochs", "4", "--out", model]  # fmt: skip
    with paused_after_two_epochs(_command(argv), stderr=subprocess.PIPE) as child:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert f"the last finished epoch is in {state}" in err and "--resume" in err
    assert state.is_file() and not model.exists()


def test_run_finetune_splits_reports_and_configures_as_run_experiment(photos):
    # The library's fine-tuning run, behind `cnncodes finetune`: the experiment's split, duplicate
    # report, held-out metrics and data entries of the configuration.
    from cnncodes.finetune import FineTune

    from cnncodes.workflows import data_config, prepare_data, run_finetune

    dataset = load_dataset(photos / "photos")
    ft = FineTune(model=TINY[1], resize=32, crop=32, epochs=1, valid_size=0, cache_dir=None)
    notes = []
    result = run_finetune(
        dataset.paths, dataset.labels, ft, test_size=0.25, random_state=3, log=notes.append
    )
    assert result.estimator is ft and result.search is None and result.table is None
    assert list(result.metrics) == ["test", "duplicates", "history", "training", "probe"]
    assert result.metrics["probe"] is None  # no cache: no probe codes to compare with
    assert result.metrics["training"]["epochs"] == 1 == len(result.metrics["history"])
    data = prepare_data(dataset.paths, dataset.labels, test_size=0.25, seed=3)
    assert result.config["split"] == {"test_size": 0.25, "seed": 3} == data.split
    expected = data_config(data.paths, data.labels, data.test_paths, data.test_labels)
    assert {k: result.config[k] for k in ("train", "test")} == expected
    assert result.metrics["test"]["n"] == len(data.test_paths)
    assert result.metrics["duplicates"] == {"test_in_train": 0, "within_train": 0}
    assert "checkpoint" not in result.config["params"] and result.config["layer"] == ft.layer_
    assert any(n.startswith("fine-tuning tests.tiny_nets:tiny_cnn on ") for n in notes)
    assert f"evaluating on {len(data.test_paths)} test images" in notes


def test_a_full_disk_and_a_second_writer_are_one_line_naming_the_state(capsys, photos, monkeypatch):
    # Issue 23 (b), (c) through the command line: a full disk is exit 1, a second run on a state
    # file a live run writes is exit 2; both one line naming the state file.
    model, state = photos / "ft.skops", photos / "ft.skops.state"
    argv = ["finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
            "--epochs", "4", "--out", model]  # fmt: skip
    with paused_after_two_epochs(_command([*argv, "--quiet"])) as child:
        code, out, err = run(capsys, *argv, "--resume")
        assert code == 2, err
        assert_one_line_error(err, str(state), f"process {child.pid}", "another run is writing")
    real_save = torch.save

    def full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 262400")

    monkeypatch.setattr(torch, "save", full)
    code, out, err = run(capsys, *argv, "--resume")
    assert code == 1, err
    assert_one_line_error(err, str(state), "No space left on device: the disk is full")
    assert "a bug" not in err
    assert torch.load(state, weights_only=True)["epochs"] == 2 and not model.exists()


def test_defaults_run_on_many_classes_of_few_images(capsys, tmp_path, monkeypatch):
    # 40 classes of 10 images: after --test-size 0.3, 7 training images per class, where the
    # former default valid_size=0.1 (28 of 280 images) could not hold one image of each class.
    from tests.conftest import write_classes

    write_classes(str(tmp_path / "many"), per_class=10, classes=[f"c{i:02d}" for i in range(40)])
    monkeypatch.chdir(tmp_path)  # the default cache, ./cache
    monkeypatch.delenv("CNNCODES_CACHE", raising=False)
    code, out, err = run(
        capsys, "finetune", tmp_path / "many", "--test-size", "0.3", "--model", "resnet18",
        "--weights", "none", "--resize", "40", "--crop", "32", "--epochs", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["train_images"] == 240  # 280, one image of each of the 40 classes held out
    assert data["metrics"]["test"]["n"] == 120
    assert "valid_acc" in data["history"][0]
    assert "fine-tuning resnet18 on 280 images (40 of them for validation)" in err


@pytest.mark.parametrize("held_out", ["test", "validation"])
def test_a_run_below_the_linear_probe_says_so_with_both_accuracies(photos, held_out):
    from cnncodes.finetune import FineTune

    from cnncodes.workflows import run_finetune

    dataset = load_dataset(photos / "photos")
    test = load_dataset(photos / "test")
    settings = dict(
        model=TINY[1], resize=32, crop=32, freeze="all", augment="none", valid_size=0.25,
        cache_dir=str(photos / "cache"),
    )  # fmt: skip
    extra = {"test": (test.paths, test.labels)} if held_out == "test" else {}
    n = 6 if held_out == "test" else 4
    # A head that barely moves from its random start ends below the probe on the same codes.
    notes = []
    ft = FineTune(**settings, epochs=1, lr=1e-9)
    result = run_finetune(dataset.paths, dataset.labels, ft, log=notes.append, **extra)
    probe = result.metrics["probe"]
    assert probe["images"] == held_out and probe["n"] == n and probe["below_probe"]
    assert probe["probe_accuracy"] == 1.0 > probe["finetune_accuracy"]
    line = [x for x in notes if "below the linear probe" in x]
    assert len(line) == 1 and f"on the same {n} {held_out} images" in line[0]
    assert f"accuracy {probe['finetune_accuracy']:.3f}, the probe's 1.000" in line[0]
    if held_out == "test":
        assert probe["finetune_accuracy"] == result.metrics["test"]["accuracy"]
    # LP-FT's head starts as that probe: with no epoch it is the probe, not below it.
    notes = []
    ft = FineTune(**settings, epochs=0, init_head="probe")
    result = run_finetune(dataset.paths, dataset.labels, ft, log=notes.append, **extra)
    probe = result.metrics["probe"]
    assert probe["finetune_accuracy"] == probe["probe_accuracy"] and not probe["below_probe"]
    assert not any("below the linear probe" in x for x in notes)


def test_defaults_run_with_a_class_of_one_image_without_validation(capsys, tmp_path):
    from tests.conftest import write_classes

    write_classes(str(tmp_path / "photos"), per_class=3, classes=("a", "b"))
    write_classes(str(tmp_path / "photos"), per_class=1, classes=("c",), seed=2)
    code, out, err = finetune(capsys, tmp_path)
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("cnncodes: warning:")]
    assert len(warned) == 1 and "valid_size='auto': no validation split" in warned[0]
    assert "on 7 images (no validation split)" in err
    assert "no validation split: no estimate of the accuracy" in out
