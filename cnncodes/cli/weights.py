"""``cnncodes weights set-preprocessing``: write the preprocessing a checkpoint's network was
trained with into the file, so that no command has to repeat it."""

from __future__ import annotations

from ..spec import INTERPOLATIONS
from ..utils.files import display
from ._core import EXIT_OK, _fill, _Formatter, _Parser
from ._options import _crop, _floats, _sizes

_WEIGHTS_EPILOG = """\
examples:
  cnncodes weights set-preprocessing mobilenet_v2.pth mobilenet_v2_pre.pth --mean 0.5 --std 0.5
  cnncodes weights set-preprocessing net.pth net.pth --in-place --resize 256 --crop 224
"""


def add_weights_parser(subparsers):
    """``cnncodes weights set-preprocessing IN OUT [--mean ..] [--std ..] ...``."""
    parser = subparsers.add_parser(
        "weights",
        help="edit checkpoint files (their preprocessing)",
        description=_fill("Edit checkpoint files: set-preprocessing writes their preprocessing."),
        epilog=_WEIGHTS_EPILOG,
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(
        dest="weights_command", required=True, metavar="{set-preprocessing}", parser_class=_Parser
    )
    edit = commands.add_parser(
        "set-preprocessing",
        help="write the preprocessing its network was trained with into a checkpoint",
        description=_fill(
            "Write IN to OUT with the given values as its preprocessing (kept with its "
            "state_dict under 'preprocessing', the form cnncodes reads), so that every command "
            "uses them without --mean, --std, ... Values not given keep the file's own, if it has "
            "some. The file is read with weights_only=True and written atomically. OUT is a new "
            "file with a new SHA-256, its identity: codes cached for IN are not reused for it."
        ),
        epilog=_WEIGHTS_EPILOG,
        formatter_class=_Formatter,
    )
    edit.add_argument("input", metavar="IN", help="the checkpoint file to read")
    edit.add_argument("output", metavar="OUT", help="the checkpoint file to write")
    edit.add_argument(
        "--in-place", action="store_true", help="allow OUT to be IN (rewrite it in place)"
    )
    group = edit.add_argument_group("preprocessing (at least one)")
    group.add_argument("--resize", type=_sizes, metavar="N|H,W", help="shorter side N, or H,W")
    group.add_argument("--crop", type=_crop, metavar="N|H,W|none", help="centre crop")
    group.add_argument("--mean", type=_floats, metavar="M|R,G,B", help="normalisation mean")
    group.add_argument("--std", type=_floats, metavar="S|R,G,B", help="normalisation std")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    edit.set_defaults(run=run_weights_set_preprocessing)


def run_weights_set_preprocessing(args):
    """Write IN's state_dict and the given preprocessing to OUT; print OUT's SHA-256."""
    from ..networks.checkpoints import set_checkpoint_preprocessing

    values = {key: getattr(args, key) for key in ("resize", "crop", "mean", "std", "interpolation")}
    digest = set_checkpoint_preprocessing(args.input, args.output, in_place=args.in_place, **values)
    print(f"wrote {display(args.output)}")
    print(f"sha256: {digest}")
    print(
        "its identity in the cache is this new SHA-256: codes cached for "
        f"{display(args.input)} are not reused; pass --weights {display(args.output)} from now on"
    )
    return EXIT_OK
