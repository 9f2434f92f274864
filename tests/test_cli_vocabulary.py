"""One name per concept across the commands (issue 22, item 3): ``--seed`` seeds the network
(its initialisation; FineTune's ``seed``), ``--random-state`` the test split and the folds,
``--num-workers`` is ``num_workers`` (``--workers`` still works, with a warning), and every
command's ``--model`` defaults to resnet50."""

from __future__ import annotations

import pytest

from cnncodes import cli

# A command line each parser accepts (DATA or a model file first), without --model.
COMMANDS = {
    "fit": ["fit", "DATA"],
    "finetune": ["finetune", "DATA"],
    "compare": ["compare", "DATA", "--test-size", "0.25"],
    "extract": ["extract", "DATA"],
    "advise": ["advise", "DATA"],
    "predict": ["predict", "model.skops", "DATA"],
}


def _help(capsys, command):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["fit", "finetune", "compare", "extract", "predict"])
def test_num_workers_everywhere_and_workers_still_works(capsys, command):
    parser = cli.build_parser()
    argv = COMMANDS[command]
    assert parser.parse_args([*argv, "--num-workers", "3"]).num_workers == 3
    capsys.readouterr()
    assert parser.parse_args([*argv, "--workers", "2"]).num_workers == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers is deprecated: use --num-workers" in err
    text = _help(capsys, command)
    assert "--num-workers N" in text and "--workers" not in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_seed_is_the_networks_and_the_model_defaults_to_resnet50(capsys, command):
    args = cli.build_parser().parse_args(COMMANDS[command])
    text = " ".join(_help(capsys, command).split())
    if command == "predict":  # the saved model has its network and seed
        assert "--seed" not in text
        return
    assert (args.model or "resnet50") == "resnet50" and "default: resnet50" in text.replace(
        "the recipe's, resnet50", "resnet50"
    )
    assert args.seed == 0 and "--seed" in text


@pytest.mark.parametrize("command", ["fit", "finetune", "compare", "advise"])
def test_random_state_seeds_the_split_and_folds(capsys, command):
    args = cli.build_parser().parse_args([*COMMANDS[command], "--random-state", "7"])
    assert args.random_state == 7
    text = " ".join(_help(capsys, command).split())
    what = "seed of the measured subsample" if command == "advise" else "seed of the test split"
    assert "--random-state N" in text and what in text


def test_finetune_seed_and_random_state_go_to_their_own_places():
    from cnncodes.cli.finetune import _fine_tune, reproducing_command

    args = cli.build_parser().parse_args(
        ["finetune", "DATA", "--seed", "5", "--random-state", "7", "--test-size", "0.25"]
    )
    assert (args.seed, args.random_state, args.model) == (5, 7, "resnet50")
    ft = _fine_tune(args, type("Output", (), {"quiet": True})(), None)
    assert ft.seed == 5
    command = reproducing_command(args)
    assert "--seed 5" in command and "--random-state 7" in command


def test_workflows_take_random_state_and_their_old_seed_still_works():
    import inspect
    import warnings

    from cnncodes.workflows.advise import advise
    from cnncodes.workflows.compare import compare_approaches
    from cnncodes.workflows.experiment import run_experiment
    from cnncodes.workflows.finetuning import run_finetune
    from cnncodes.workflows.rundata import renamed_seed

    for function in (run_experiment, run_finetune, compare_approaches, advise):
        assert inspect.signature(function).parameters["random_state"].default == 0
    with pytest.warns(FutureWarning, match=r"run_experiment\(seed=...\) is now .*random_state"):
        assert renamed_seed(3, 0, "run_experiment") == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_seed(None, 7, "run_experiment") == 7
