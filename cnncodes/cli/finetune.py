"""``cnncodes finetune``: fine-tune a pretrained network on labelled images, evaluate, save it."""

from __future__ import annotations

import json
import os
import shlex

from ..params import AUGMENTS, HEADS, INIT_HEADS, POOLINGS
from ..utils.diskspace import naming_write_failures
from ..utils.files import display
from ..utils.jsonable import jsonable, skipped_json
from ._core import (
    EXIT_OK,
    UsageError,
    _add_data_options,
    _add_engine_options,
    _add_held_out_options,
    _add_model_options,
    _add_runtime_options,
    _cache_dir_from_args,
    _check_engine_args,
    _check_out_path,
    _check_report_dir,
    _count,
    _fill,
    _fmt,
    _Formatter,
    _fraction,
    _load_labelled,
    _load_test,
    _note_skipped,
    _Once,
    _Output,
    _positive_float,
    _positive_int,
    _preprocessing_from_args,
    _report_lines,
    _runtime_from_args,
    _saved_model_lines,
    _seed,
    _short_weights,
    _test_metrics_lines,
)

_FINETUNE_EPILOG = """\
examples:
  # scenario 2 (large, similar): train the top blocks of MobileNetV2 and a new head
  cnncodes finetune photos/ --model mobilenet_v2 --freeze features.13 --epochs 8 \\
      --test-size 0.25 --out ft.skops --report ft-report/

  # scenario 4 (large, very different): train every layer from the pretrained start, LP-FT
  cnncodes finetune photos/ --model mobilenet_v2 --freeze none --init-head probe \\
      --lr 1e-3 --trunk-lr 1e-4 --epochs 15 --early-stopping 3 --test test/ --out ft.skops

  # a killed run: the same command with --resume continues from its last finished epoch
  cnncodes finetune photos/ ... --out ft.skops --resume

  # only the head, on a local checkpoint; the frozen network runs once (--augment none)
  cnncodes finetune photos/ --model resnet18 --weights my_resnet18.pth --freeze all \\
      --augment none --epochs 30 --lr 1e-2 --test test/

  # the fine-tuned network as a checkpoint: its codes, then any recipe on them
  cnncodes finetune photos/ --model mobilenet_v2 --freeze features.13 --save-checkpoint ft.pth
  cnncodes fit photos/ --pipeline linear_svm --model mobilenet_v2 --weights ft.pth

Each epoch prints its training loss, validation loss and accuracy and seconds on stderr.
With --out FILE the training state is saved after every epoch in FILE.state (with only
--report DIR: DIR/finetune.state) and removed when the run completes: a killed run loses at most
the epoch it was in. --report DIR writes metrics.json, config.json (the command line that
reproduces the run), training_curves.png and, with test images, confusion_matrix.png.
A saved model predicts with 'cnncodes predict FILE DATA' (its weights are inside it).
BatchNorm layers keep their pretrained running statistics, also in the layers that train (their
scale and shift train): --train-bn lets them follow the batches instead (for large datasets and
checkpoints with real BatchNorm statistics; one whose BatchNorm was folded into the convolutions,
running mean 0 and variance 1, collapses under batch statistics).
"""

#: The state file's name in --report DIR when there is no --out.
STATE_NAME = "finetune.state"


def _non_negative_fraction(text):
    """--valid-size: auto, 0 (no validation) or a fraction below 1."""
    if text.strip() == "auto":
        return "auto"
    return 0.0 if text.strip() in ("0", "0.0") else _fraction(text)


def _add_tuning_options(group, *, epochs, augment, helps, epochs_type=_count):
    """--epochs, --lr (--trunk-lr where ``helps`` has it) and --augment, for ``finetune`` and
    ``compare`` (whose rows fine-tune): the defaults and ``helps`` (by option) say what each
    command means by them."""
    group.add_argument(
        "--epochs", type=epochs_type, default=epochs, metavar="N", help=helps["epochs"]
    )
    group.add_argument("--lr", type=_positive_float, default=1e-3, metavar="LR", help=helps["lr"])
    if "trunk_lr" in helps:
        group.add_argument("--trunk-lr", type=_positive_float, metavar="LR", help=helps["trunk_lr"])
    group.add_argument("--augment", choices=AUGMENTS, default=augment, help=helps["augment"])


def _add_fine_tuning_options(group):
    """--freeze, --layer, --pooling, the head, the learning rates, epochs and validation."""
    group.add_argument(
        "--freeze",
        default="all",
        metavar="NODE|all|none",
        help="keep this graph node and everything before it as pretrained (see 'cnncodes "
        "layers M'); all: train only the new head; none: train every layer (default: %(default)s)",
    )
    group.add_argument(
        "--layer",
        "-l",
        action=_Once,
        default="penultimate",
        metavar="L",
        help="where the network is cut: the new head receives this node's output (default: "
        "%(default)s, the input of the network's last linear layer)",
    )
    group.add_argument(
        "--pooling",
        "-p",
        action=_Once,
        choices=POOLINGS,
        default="avg",
        help="how --layer's maps become the head's input (default: %(default)s)",
    )
    group.add_argument(
        "--head",
        choices=HEADS,
        default="linear",
        help="the new head: a linear layer, or one hidden ReLU layer (default: %(default)s)",
    )
    group.add_argument(
        "--init-head",
        choices=INIT_HEADS,
        default="random",
        help="probe (LP-FT): start the linear head as a logistic regression on the codes of the "
        "training images, so that training does not start from a random head (default: "
        "%(default)s)",
    )
    group.add_argument(
        "--train-bn",
        action="store_true",
        help="let the BatchNorm layers that train update their running statistics from the "
        "batches (default: they keep the pretrained ones; only their scale and shift train)",
    )
    _add_tuning_options(
        group,
        epochs=10,
        augment="crop-flip",
        helps={
            "epochs": "passes over the training images (default: %(default)s)",
            "lr": "learning rate of the head, AdamW with cosine decay (default: %(default)s)",
            "trunk_lr": "learning rate of the trained pretrained layers (default: --lr / 10)",
            "augment": "train-time augmentation: random resized crops and/or horizontal flips "
            "(default: %(default)s; 'none' lets a frozen trunk be read from the code cache)",
        },
    )
    group.add_argument(
        "--valid-size",
        type=_non_negative_fraction,
        default="auto",
        metavar="F",
        help="stratified fraction of the training images held out for the validation loss "
        "and accuracy of every epoch; 0: none; auto: 0.1, or one image per class where 0.1 "
        "holds fewer, or none where a class has a single image (default: %(default)s)",
    )
    group.add_argument(
        "--early-stopping",
        type=_positive_int,
        metavar="N",
        help="stop after N epochs without a better validation loss and keep the best epoch",
    )


def _add_results_options(out):
    """--out, --report, --save-checkpoint and --resume."""
    out.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="save the fine-tuned model: .joblib or .skops (for 'cnncodes predict'); the "
        "per-epoch state goes to FILE.state until the run completes",
    )
    out.add_argument(
        "--report",
        metavar="DIR",
        help="write metrics.json, config.json, training_curves.png and confusion_matrix.png "
        "into DIR",
    )
    out.add_argument(
        "--save-checkpoint",
        metavar="PATH.pth",
        help="also write the fine-tuned network as a checkpoint of its architecture (--weights "
        "PATH.pth of any command; its SHA-256 is its identity in the cache)",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run whose state is in FILE.state (--out FILE) or "
        f"DIR/{STATE_NAME} (--report DIR, without --out); same data and settings",
    )


def add_finetune_parser(subparsers):
    """``cnncodes finetune DATA --model M --weights W --freeze NODE|all|none ...``."""
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained network on labelled images (new head, frozen early layers)",
        description=_fill(
            "Fine-tune a pretrained network on the labelled images of DATA (CS231n scenarios 2 "
            "and 4): cut it at --layer, put a new head on it, keep the layers up to --freeze as "
            "pretrained and train the rest, with a stratified validation split reported every "
            "epoch. Then evaluate it on held-out images (the same metrics as 'cnncodes fit') and "
            "save it for 'cnncodes predict', as a checkpoint for any command, and a report."
        ),
        epilog=_FINETUNE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    _add_model_options(
        parser,
        layers=False,
        seed_help="seed of the network's training (FineTune's seed): new head, validation "
        "split, batch order, augmentation, and the initialisation with --weights none "
        "(default: %(default)s)",
    )
    _add_fine_tuning_options(parser.add_argument_group("fine-tuning"))
    evaluation = parser.add_argument_group("evaluation")
    _add_held_out_options(evaluation)
    evaluation.add_argument(
        "--random-state",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the test split of --test-size, the one 'cnncodes fit' makes (before this "
        "option, --seed seeded it) (default: %(default)s)",
    )
    _add_runtime_options(parser)
    _add_engine_options(parser)
    _add_results_options(parser.add_argument_group("results"))
    parser.set_defaults(run=run_finetune)


def _state_path(args, out_path):
    """Where the per-epoch state lives: beside --out, else in --report; None: nowhere."""
    if out_path is not None:
        return out_path + ".state"
    if args.report is not None:
        return os.path.join(os.path.abspath(args.report), STATE_NAME)
    return None


def _check_args(args, output):
    """Every check that needs no image and no network: (out path, checkpoint path, state path,
    whether a killed run's state is resumed)."""
    from ..estimators import persistence

    if args.impl != "pil":
        raise UsageError(
            f"--impl {args.impl}: fine-tuning decodes and augments its images with Pillow; "
            "leave --impl out"
        )
    _check_engine_args(args)
    out_path = _check_out_path(args.out, persistence.FORMATS)
    checkpoint = _check_out_path(args.save_checkpoint, (".pth", ".pt"), "--save-checkpoint")
    _check_report_dir(args.report, [("--out", out_path), ("--save-checkpoint", checkpoint)])
    state = _state_path(args, out_path)
    resumed = args.resume and state is not None and os.path.exists(state)
    if state is None:
        if args.resume:
            raise UsageError(
                "--resume continues the state a killed run kept beside --out FILE (FILE.state) "
                f"or in --report DIR (DIR/{STATE_NAME}); give the killed run's --out or --report"
            )
        output.note("no --out or --report: no per-epoch state is kept, a killed run cannot resume")
    elif args.resume:
        if resumed:
            output.note(f"--resume: continuing the run saved in {display(state)}")
        else:
            output.note(f"--resume: no state in {display(state)} yet; starting at epoch 1")
    elif os.path.exists(state):
        raise UsageError(
            f"{state} holds the state of an unfinished run: add --resume to continue it, or "
            "remove the file to start afresh"
        )
    return out_path, checkpoint, state, resumed


def _fine_tune(args, output, state):
    """The unfitted :class:`~cnncodes.finetune.FineTune` that the options describe."""
    from ..estimators.finetune import FineTune

    return FineTune(
        model=args.model,
        weights=args.weights,
        freeze=args.freeze,
        layer=args.layer,
        pooling=args.pooling,
        head=args.head,
        init_head=args.init_head,
        train_bn=args.train_bn,
        lr=args.lr,
        trunk_lr=args.trunk_lr,
        epochs=args.epochs,
        augment=args.augment,
        valid_size=args.valid_size,
        early_stopping=args.early_stopping,
        seed=args.seed,
        model_kwargs=args.model_kwargs,
        **{k: v for k, v in _preprocessing_from_args(args).items() if k != "impl"},
        cache_dir=_cache_dir_from_args(args),
        **_runtime_from_args(args),
        on_error=args.on_error,
        checkpoint=state,
        resume=args.resume,
        progress=not output.quiet,
        engine=args.engine,
        ray_address=args.address,
    )


# Options of the reproducing command line: (flag, dest), in --help order. Not --out, --report,
# --save-checkpoint, --resume, --json, --quiet: where results go, not what is computed.
_REPRODUCED = (
    ("--model", "model"),
    ("--weights", "weights"),
    ("--seed", "seed"),
    ("--random-state", "random_state"),
    ("--resize", "resize"),
    ("--crop", "crop"),
    ("--mean", "mean"),
    ("--std", "std"),
    ("--interpolation", "interpolation"),
    ("--freeze", "freeze"),
    ("--layer", "layer"),
    ("--pooling", "pooling"),
    ("--head", "head"),
    ("--init-head", "init_head"),
    ("--epochs", "epochs"),
    ("--lr", "lr"),
    ("--trunk-lr", "trunk_lr"),
    ("--augment", "augment"),
    ("--valid-size", "valid_size"),
    ("--early-stopping", "early_stopping"),
    ("--test", "test"),
    ("--test-size", "test_size"),
    ("--batch-size", "batch_size"),
    ("--precision", "precision"),
    ("--on-error", "on_error"),
)


def _option_text(value):
    """An option's value as the command line takes it: sizes as H,W, triples as R,G,B."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def reproducing_command(args):
    """``cnncodes finetune ...`` with every setting that changes the result, explicitly.

    Defaults are written out too, so that the line means the same under a later version whose
    defaults changed; a --cache-dir other than the default, and --no-cache, are kept.
    """
    argv = ["cnncodes", "finetune", args.data]
    for flag, dest in _REPRODUCED:
        value = getattr(args, dest)
        if value is not None:
            argv += [flag, _option_text(value)]
    for key, value in (getattr(args, "model_kwargs", None) or {}).items():
        # As JSON, which --model-arg reads back to the same value (a string "5" stays one).
        argv += ["--model-arg", f"{key}={json.dumps(value)}"]
    if args.train_bn:
        argv.append("--train-bn")
    if args.allow_outside_root:
        argv.append("--allow-outside-root")
    if getattr(args, "no_cache", False):
        argv.append("--no-cache")
    elif args.cache_dir != "auto":
        argv += ["--cache-dir", args.cache_dir]
    return shlex.join(argv)


def _lines(ft, metrics, training, test_note, out_path, checkpoint, written):
    history = metrics["history"]
    lines = [
        f"fine-tuned {ft.spec_.model} [{_short_weights(ft.spec_.weights_id)}], freeze={ft.freeze}, "
        f"layer={ft.layer_} ({ft.pooling} pooling), {ft.head} head: {training['epochs']} "
        f"epoch(s) on {training['train_images']} training images"
    ]
    if history:
        last = history[-1]
        valid = ""
        if "valid_acc" in last:
            valid = (
                f", validation loss {_fmt(last['valid_loss'])}, accuracy {_fmt(last['valid_acc'])}"
            )
        lines.append(f"last epoch: training loss {_fmt(last['train_loss'])}{valid}")
    speed = training["images_per_second"]
    lines.append(
        f"training: {_fmt(training['epoch_seconds'], 1)} s in epochs"
        + (f", {speed:.1f} images/s" if speed else "")
        + (
            "; the frozen layers' activations came from the code cache"
            if training["trunk_cached"]
            else "; every epoch ran the whole network"
        )
    )
    test = metrics["test"]
    if test is None and history and "valid_acc" not in history[-1]:
        lines.append(
            "no held-out images (--test DATA2 or --test-size F) and no validation split: no "
            "estimate of the accuracy"
        )
    elif test is None:
        lines.append(
            "no held-out images (--test DATA2 or --test-size F): the validation accuracy above "
            "is the only estimate"
        )
    else:
        lines += _test_metrics_lines(f"test ({test_note}, {test['n']} images)", test)
        shared = metrics["duplicates"]["test_in_train"]
        if shared:
            lines.append(f"same content (SHA-256): {shared} test image(s) also in training")
    lines += _saved_model_lines(out_path, ft)
    if checkpoint:
        lines.append(f"saved checkpoint: {display(checkpoint)} (use it as --weights)")
    lines += _report_lines(written)
    return lines


def _interrupted_note(state):
    """What a Ctrl-C during the run leaves: where the last finished epoch is, if anywhere."""
    if state is None:
        return "no state was kept (no --out or --report): a new run starts at epoch 1"
    if os.path.exists(state):
        return (
            f"the last finished epoch is in {display(state)}: the same command with "
            "--resume continues from there"
        )
    return "no epoch had finished: a new run starts at epoch 1"


def _fine_tune_run(args, output, state):
    """The library's fine-tuning run on the command's data; Ctrl-C keeps the state."""
    from ..workflows.finetuning import run_finetune as run

    dataset = _load_labelled(args, output, "finetune")
    test_set, test_note = _load_test(args)
    try:
        result = run(
            dataset.paths,
            dataset.labels,
            _fine_tune(args, output, state),
            test=None if test_set is None else (test_set.paths, test_set.labels),
            test_size=args.test_size,
            random_state=args.random_state,
            on_error=args.on_error,
            log=output.note,
        )
    except KeyboardInterrupt:
        output.warn(f"fine-tuning interrupted; {_interrupted_note(state)}")
        raise
    return dataset, test_note, result


def _summary(dataset, ft, result, out_path, checkpoint, written, resumed):
    """The --json summary of the run."""
    metrics = result.metrics
    return {
        "command": "finetune",
        "data": dataset.root,
        "model": ft.spec_.model,
        "weights": ft.spec_.weights_id,
        "freeze": ft.freeze,
        "layer": ft.layer_,
        "metrics": metrics,
        "history": metrics["history"],
        **metrics["training"],
        "preprocessing": {
            **ft.spec_.preprocessing.to_dict(),
            "source": dict(ft.spec_.preprocessing.source),
        },
        "skipped": {"test": skipped_json(result.skipped["test"])},
        "out": out_path,
        "checkpoint": checkpoint,
        "report": written or None,
        "resumed": resumed,
    }


def run_finetune(args):
    """Fine-tune, evaluate on the held-out images, save the model, checkpoint and report."""
    from ..estimators import persistence

    output = _Output(args)
    out_path, checkpoint, state, resumed = _check_args(args, output)
    dataset, test_note, result = _fine_tune_run(args, output, state)
    ft, metrics = result.estimator, result.metrics
    if out_path is not None:
        with naming_write_failures(out_path, "the model (--out)"):
            persistence.save(ft, out_path)
    if checkpoint is not None:
        with naming_write_failures(checkpoint, "the checkpoint (--save-checkpoint)"):
            ft.save_checkpoint(checkpoint)
    written = {}
    if args.report is not None:
        from ..workflows.report import write_finetune_report

        config = {"command": reproducing_command(args), **result.config}
        written = write_finetune_report(args.report, metrics, config)
    if state is not None and os.path.exists(state) and (out_path or written):
        os.remove(state)  # the run is complete and its results saved: nothing left to resume
    _note_skipped(output, result.skipped["test"])
    summary = _summary(dataset, ft, result, out_path, checkpoint, written, resumed)
    lines = _lines(ft, metrics, metrics["training"], test_note, out_path, checkpoint, written)
    output.result(jsonable(summary), lines)
    return EXIT_OK
