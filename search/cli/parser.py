"""`search`: the command line. Parses flags, then hands over to the module that does the work.

Every user error (a bad flag, spec, storage URL, study or dataset) ends as one line on stderr
and exit code 2, checked before any database is written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import NoReturn

from search.study.heartbeat_settings import HEARTBEAT_FLAGS
from search.study.replicates import MAX_MARGIN_PP, MAX_SEEDS
from search.study.space import (
    PRUNERS,
    TARGET_SETS,
    VARIANTS,
    SpaceError,
    check_alpha,
    check_dropout,
    check_lr,
    check_rank,
)
from search.study.storage import DEFAULT_STORAGE, STORAGE_VARIABLE

EXIT_USAGE = 2
# The image files `search predict` takes: objectives.data.IMAGE_EXTENSIONS, written out because
# that module imports torch and --help must answer at once (a test keeps the two equal).
PREDICT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                      ".webp")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the user asked for clear errors; --help has the usage.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def argument_type(check, what: str):
    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        try:
            return check(value)
        except SpaceError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = what
    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def pack_setting(text: str) -> int | str:
    """--pack: `auto` or a positive number of trials."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}"
                                         ) from None


def seed_count(text: str) -> int | str:
    """--seeds: how many seeds train each configuration, 1 to MAX_SEEDS, or `auto` (race)."""
    if text == "auto":
        return text
    try:
        count = positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}"
                                         ) from None
    if count > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEEDS}, got {count}")
    return count


def seed_count_only(text: str) -> int:
    """--max-seeds: 1 to MAX_SEEDS."""
    count = seed_count(text)
    if count == "auto":
        raise argparse.ArgumentTypeError("must be a positive integer, got 'auto'")
    return count


def margin_pp(text: str) -> float:
    """--margin: percentage points above 0, at most MAX_MARGIN_PP."""
    value = positive_float(text)
    if value > MAX_MARGIN_PP:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_MARGIN_PP:g} percentage "
                                         f"points, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (--val-fraction)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def study_name(text: str) -> str:
    # An empty name would silently mean the default study: refuse it instead.
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def output_path(text: str, folder: bool) -> Path:
    """Where a command writes a file (or, with `folder`, a folder). One rule for every output
    flag: the folder it goes into must exist (nothing is created above it), and a file is
    not replaced by a folder nor a folder by a file."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {str(path.parent)!r} does not exist")
    if folder and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    if not folder and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return path


def output_file(text: str) -> Path:
    return output_path(text, folder=False)


def output_folder(text: str) -> Path:
    return output_path(text, folder=True)


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def add_storage(parser: argparse.ArgumentParser) -> None:
    # From the environment so that a database password stays out of `ps` and shell history.
    default = os.environ.get(STORAGE_VARIABLE) or DEFAULT_STORAGE
    parser.add_argument("--storage", default=default, metavar="URL",
                        help="Optuna storage: sqlite:///PATH or postgresql://user:pass@host/db "
                             f"(default: ${STORAGE_VARIABLE} if set, else {DEFAULT_STORAGE} in "
                             "the current folder)")


def add_existing_study_flags(parser: argparse.ArgumentParser, artifacts: bool = True) -> None:
    """--study, --storage (and --artifacts) of a command that reads an existing study."""
    parser.add_argument("--study", type=study_name,
                        help="study name (default: the storage's only study)")
    add_storage(parser)
    if artifacts:
        add_artifacts(parser)


def add_artifacts(parser: argparse.ArgumentParser,
                  default: str = "the one the study was created with") -> None:
    parser.add_argument("--artifacts", metavar="DIR",
                        help=f"artifact folder for trained weights and pictures (default: "
                             f"{default})")


def add_local_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder with the dataset files (torchvision layout)")
    parser.add_argument("--device", help="auto (default: first GPU, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="torch.compile the model (default: the spec's, off). Costs a "
                             "compile per trial: on the CPU demo +3.9%% speed after 19 s of "
                             "compiling (BENCHMARKS.md); not yet measured on a GPU")


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="study spec TOML (default: studies/cifar100-vit-s.toml, "
                                       "the public model card)")
    parser.add_argument("--study", type=study_name,
                        help="study name (default: the spec's study.name)")
    add_storage(parser)
    add_artifacts(parser, "next to a SQLite file, e.g. search-artifacts/")
    parser.add_argument("--workers", type=non_negative_int, metavar="N",
                        help="local worker processes (default: one per visible GPU, else 1; "
                             "0 only creates the study and queues the trials)")
    parser.add_argument("--seeds", type=seed_count, metavar="N|auto",
                        help="train every configuration (baselines included) with N seeds: "
                             "seed, seed+1, ... change initialisation, dropout and data order, "
                             "never the splits. The leaderboard then groups them: mean, sd, "
                             "interval, tie test over seeds x examples (default from the "
                             f"spec: 1; at most {MAX_SEEDS}; stored in the study). auto "
                             "(grid only): race, one seed a round for the configurations "
                             "not yet told apart from the best (see --max-seeds, --margin)")


def add_worker_flags(parser: argparse.ArgumentParser, stored: bool) -> None:
    """GPUs and fault handling of workers; `stored`: the values are kept in the study."""
    every = "every visible GPU" if stored else "one worker on the spec's device"
    parser.add_argument("--gpus", nargs="+", type=non_negative_int, metavar="ID",
                        help="GPU indices for this host's workers: one worker process per GPU "
                             f"(CUDA_VISIBLE_DEVICES), round robin with --workers (default: "
                             f"{every})")
    parser.add_argument("--workers-per-gpu", type=positive_int, metavar="K",
                        help="K worker processes on each GPU (of --gpus, else every visible "
                             "one): small models that cannot fill a GPU alone share it")
    parser.add_argument("--pack", type=pack_setting, default="auto", metavar="K|auto",
                        help="train up to K trials together on one frozen backbone (they differ "
                             "only in LoRA params; each stays a trial of its own). auto "
                             "(default): as many as a measured probe says fit in this device's "
                             "free memory, this host's share of the queue, and for TPE trials "
                             "the sampler's start-up trials left or a quarter of the budget; 1: "
                             "one trial at a time. Models with BatchNorm run one at a time")
    parser.add_argument("--storage-timeout", type=positive_int, default=600, metavar="S",
                        help="how long a worker waits out a database that is away (restart, "
                             "network cut) before it stops with a non-zero exit; its trial is "
                             "then retried by another worker, never failed (default: 600)")
    beats = parser.add_argument_group(
        "dead workers (a killed worker's trial is failed after the grace period and re-run, "
        "resuming from its last finished epoch; " +
        ("kept in the study for every worker, default from the spec's [heartbeat])"
         if stored else "default: the study's settings)"))
    beats.add_argument(HEARTBEAT_FLAGS["interval"], type=positive_int, metavar="S",
                       help="seconds between heartbeats of a running trial (spec default 60)")
    beats.add_argument(HEARTBEAT_FLAGS["grace_period"], type=positive_int, metavar="S",
                       help="seconds without heartbeat before a trial counts as dead and is "
                            "retried; longer than the interval (spec default 180)")
    beats.add_argument(HEARTBEAT_FLAGS["max_retries"], type=non_negative_int, metavar="N",
                       help="re-runs of a dead worker's trial (spec default 2)")


def add_train_overrides(parser: argparse.ArgumentParser) -> None:
    overrides = parser.add_argument_group("spec overrides (single fields of [train])")
    overrides.add_argument("--model", help="timm model name, e.g. vit_small_patch16_224")
    overrides.add_argument("--weights", metavar="PATH", type=lambda p: str(Path(p).resolve()),
                           help="local pretrained checkpoint instead of the model hub's, or "
                                "a `search export --weights` folder: its model, head aside, "
                                "starts this study")
    overrides.add_argument("--targets", help="LoRA's layers, comma-separated names: q,k,v | q,v | "
                                             "qkv for a ViT; convolutions or Linears of a CNN, "
                                             "e.g. conv2 or conv1,conv2,conv3 (ResNet), "
                                             "conv_pw,conv_pwl (EfficientNet)")
    overrides.add_argument("--dataset", help="cifar10 | cifar100 | mnist | fashion_mnist | "
                                             "emnist_balanced | emnist_byclass | emnist_bymerge "
                                             "| emnist_letters | emnist_digits | emnist_mnist | "
                                             "digits | imagefolder:PATH")
    overrides.add_argument("--epochs", type=positive_int, metavar="N",
                           help="training epochs of every trial")
    overrides.add_argument("--batch-size", type=positive_int, metavar="N",
                           help="training images per step")
    overrides.add_argument("--lr", type=positive_float, metavar="LR",
                           help="AdamW learning rate of the trained parameters (start of "
                                "its cosine schedule)")
    overrides.add_argument("--image-size", type=positive_int, metavar="PX",
                           help="side in pixels the images are resized to (a ViT's "
                                "model_kwargs img_size must match it)")
    overrides.add_argument("--val-fraction", type=fraction, metavar="F",
                           help="share of the train split held out for validation, in (0, 1)")
    overrides.add_argument("--train-seed", type=non_negative_int,
                           help="seed of the data split, initialisation and batch order")
    add_local_fields(overrides)


def add_ranks_and_alphas(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--ranks and --alphas; `help_text` has a {} for "ranks" / "alphas"."""
    parser.add_argument("--ranks", nargs="+", type=argument_type(check_rank, "rank"),
                        metavar="R", help=help_text.format("ranks"))
    parser.add_argument("--alphas", nargs="+", type=argument_type(check_alpha, "alpha"),
                        metavar="A", help=help_text.format("alphas"))


def add_layers_and_variants(parser: argparse.ArgumentParser, chooser: str) -> None:
    """--targets-sets and --scalings; `chooser` says who chooses among them."""
    sets = ", ".join(f"{name} = {targets}" for name, targets in TARGET_SETS.items())
    parser.add_argument("--targets-sets", nargs="+", choices=tuple(TARGET_SETS), metavar="SET",
                        help=f"named sets of a ViT's adapted layers {chooser} ({sets}; all "
                             "adds the blocks' MLP); default: the spec's targets")
    parser.add_argument("--scalings", nargs="+", choices=tuple(VARIANTS), metavar="NAME",
                        help=f"LoRA variants {chooser}: lora (update scaled by alpha / r, the "
                             "default), rslora (alpha / sqrt(r)), dora (DoRA; trains alone, "
                             "never in a pack)")


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """-v / -q on every command, read by `search.cli.console_log`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       default=0, help="also show debug lines, each with its time and module")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       help="show only warnings and errors (no progress lines or bars)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="search",
        description="Hyperparameter search for LoRA fine-tuning of Vision Transformers. "
                    "Studies live in an Optuna SQL storage; any number of workers share them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=ArgumentParser)

    grid = commands.add_parser(
        "grid", help="queue the no-LoRA baseline + a rank x alpha x dropout grid, run workers",
        description="Queue the no-LoRA baseline (frozen backbone, trained head) and every point "
                    "of the grid ranks x alphas x dropouts in a study, then run local workers "
                    "until the queue is empty. Idempotent: the same command twice adds no "
                    "trial; a wider grid adds only the new points.")
    add_study_flags(grid)
    add_ranks_and_alphas(grid, "LoRA {} (default from the spec: 2 4 8)")
    grid.add_argument("--dropouts", nargs="+", type=argument_type(check_dropout, "dropout"),
                      metavar="D", help="LoRA dropouts in [0, 1) (default from the spec: 0.1)")
    grid.add_argument("--lrs", nargs="+", type=argument_type(check_lr, "learning rate"),
                      metavar="LR", help="learning rates, each point trained with each "
                                         "(default: the spec's lr alone)")
    add_layers_and_variants(grid, "in the grid")
    grid.add_argument("--max-seeds", type=seed_count_only, metavar="N",
                      help=f"with --seeds auto: the most seeds a configuration gets, 1 to "
                           f"{MAX_SEEDS} (default from the spec: 10)")
    grid.add_argument("--margin", type=margin_pp, metavar="PP",
                      help="with --seeds auto: the race ends when the survivors are "
                           "equivalent within this many percentage points of validation "
                           "accuracy (90%% interval of each one's paired difference with the "
                           "best inside +/- PP; default from the spec: 0.5)")
    grid.add_argument("--dry-run", action="store_true",
                      help="print the planned trials with their parameter counts; "
                           "touches no database, downloads and trains nothing")
    grid.add_argument("--format", choices=("table", "json"), default="table",
                      help="output format of --dry-run (default: table)")
    add_worker_flags(grid, stored=True)
    add_train_overrides(grid)

    tpe = commands.add_parser(
        "optuna", help="TPE search over rank, alpha and dropout with pruning, run workers",
        description="Queue the no-LoRA baseline and as many TPE trials as the study lacks to "
                    "hold N finished LoRA trials (complete or pruned, grid points included), "
                    "then run local workers. Re-running tops the study up; it never runs N "
                    "more. The sampler (TPE, constant liar, seeded), space and pruner are "
                    "stored in the study, so `search worker` elsewhere runs the same search.")
    add_study_flags(tpe)
    tpe.add_argument("--trials", type=positive_int, metavar="N",
                     help="finished LoRA trials the study should hold (default from the spec: "
                          "10, as the model card)")
    add_ranks_and_alphas(tpe, "{} TPE chooses from (default: 2 4 8)")
    tpe.add_argument("--dropout-range", nargs=2, metavar=("LO", "HI"),
                     type=argument_type(check_dropout, "dropout"),
                     help="dropout interval, 0 <= LO < HI < 1 (default: 0.05 0.30)")
    tpe.add_argument("--lr-range", nargs=2, metavar=("LO", "HI"),
                     type=argument_type(check_lr, "learning rate"),
                     help="learning-rate interval TPE draws from on a log scale, 0 < LO < HI "
                          "(default: the spec's lr, not searched)")
    add_layers_and_variants(tpe, "TPE chooses from")
    tpe.add_argument("--seed", type=non_negative_int, metavar="S",
                     help="sampler seed (default: 0); the same seed repeats the suggestions")
    tpe.add_argument("--pruner", choices=PRUNERS,
                     help="stop clearly bad trials early: median (default; never before a third "
                          "of the epochs), hyperband, or none (the model card)")
    tpe.add_argument("--dry-run", action="store_true",
                     help="print the baselines with their parameter counts, how many TPE "
                          "trials would be queued (the study read, if it exists, never "
                          "written) and the space they are sampled from; downloads and "
                          "trains nothing")
    tpe.add_argument("--format", choices=("table", "json"), default="table",
                     help="output format of --dry-run (default: table)")
    add_worker_flags(tpe, stored=True)
    add_train_overrides(tpe)

    worker = commands.add_parser(
        "worker", help="join a study and run its queued trials until none is left",
        description="Join an existing study knowing only its storage and name (the spec, "
                    "sampler, pruner and heartbeat settings are stored in the study) and run "
                    "queued trials until none is queued or running. Exit 0 when nothing failed, "
                    "1 when a trial it ran failed or a point was given up, 75 when its "
                    "environment stopped it (disk full, out of memory, database away past "
                    "--storage-timeout), 128+N after signal N; SIGTERM or Ctrl-C puts the "
                    "trial in hand back in the queue (143 / 130).")
    worker.add_argument("--study", required=True, type=study_name,
                        help="name of the study to join (its storage holds everything else)")
    add_storage(worker)
    add_artifacts(worker)
    worker.add_argument("--workers", type=positive_int, metavar="N",
                        help="worker processes on this host (default: one per --gpus ID, else 1)")
    worker.add_argument("--threads", type=positive_int, help="CPU threads for this worker")
    # A local child appends what it does to this file (JSON lines), so that the command that
    # started it can tell what it ran even if it was killed.
    worker.add_argument("--journal", help=argparse.SUPPRESS)
    worker.add_argument("--position", type=non_negative_int, default=0,
                        help=argparse.SUPPRESS)  # progress-bar row among local workers
    # How many local workers share the queue (set by the command that starts them): --pack
    # auto then claims this worker's share of a grid, not all of it.
    worker.add_argument("--queue-share", type=positive_int, default=1, help=argparse.SUPPRESS)
    add_worker_flags(worker, stored=False)
    add_local_fields(worker)

    dashboard = commands.add_parser(
        "dashboard", help="serve optuna-dashboard on the storage, with the trials' artifacts",
        description="Serve optuna-dashboard on the study storage with the artifact store: the "
                    "trial table is the leaderboard (value = validation accuracy; metrics, "
                    "baseline flag and notes as user attributes), learning curves from the "
                    "per-epoch validation accuracy, and each trial's artifacts. It prints "
                    "each study's Note page first: the leaderboard, the recommendation and "
                    "the accuracy-against-parameters chart are there, not on the study's "
                    "home page. Listens on localhost unless --host says otherwise (the "
                    "dashboard has no login).")
    add_storage(dashboard)
    add_artifacts(dashboard, "the one the studies were created with")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every "
                                "interface, with a warning)")
    dashboard.add_argument("--port", type=positive_int, default=8080,
                           help="port (default: 8080)")

    board = commands.add_parser(
        "leaderboard", help="all trials of a study, best first, and which are tied with the best",
        description="All trials of a study, best validation accuracy first; the baseline is "
                    "marked. Each complete trial's val_ci / test_ci is its 95% Wilson interval; "
                    "tied: not told apart from the best by a paired test on the validation "
                    "images (exact McNemar; with seeds, a bootstrap over seeds x examples; "
                    "Holm-corrected, 0.05); recommended: the tied configuration with the fewest "
                    "trainable parameters. The closing lines say the tied set, the "
                    "recommendation, the baseline's gap with its p-value and whether the pick "
                    "holds on the test set.")
    add_existing_study_flags(board)
    board.add_argument("--note", action="store_true",
                       help="also rewrite the dashboard's notes from the storage: the study's "
                            "note (this leaderboard, with the accuracy-against-parameters "
                            "chart) and each finished trial's (workers do it after each trial; "
                            "this is for studies made before they did)")
    board.add_argument("--format", choices=("table", "json", "csv"), default="table",
                       help="table (with the closing lines), json or csv (the rows' fields)")
    board.add_argument("--by", choices=("auto", "trial", "configuration"), default="auto",
                       help="one row per trial, or per configuration with its seeds grouped "
                            "(mean, sd, interval over seeds x examples); auto: per "
                            "configuration when the study has several seeds (default)")

    report = commands.add_parser(
        "report", help="the study's comparison table and charts, as files in a folder",
        description="Write the comparison of a study's completed trials: report.md and "
                    "report.csv (method, model, rank, alpha, dropout, val/test accuracy, "
                    "weighted F1, AUC micro/macro, trainable %), a bar chart of the metrics "
                    "per trial, test accuracy against trainable parameters, and the best "
                    "trial's confusion matrix.")
    add_existing_study_flags(report)
    report.add_argument("--out", type=output_folder, default="report", metavar="DIR",
                        help="folder to write (default: report/)")

    export = commands.add_parser(
        "export", help="write the best (or recommended) trial's params, metrics and spec",
        description="Write the best completed trial's (or with --pick recommended, the "
                    "recommended one's) params, value, metrics, full training spec and why it "
                    "was picked; with --weights, also a peft adapter folder and merged weights.")
    add_existing_study_flags(export)
    chosen = export.add_mutually_exclusive_group()
    chosen.add_argument("--pick", choices=("best", "recommended"), default="best",
                        help="best: the trial of highest validation accuracy (default); "
                             "recommended: the configuration with the fewest trainable "
                             "parameters among those tied with the best (see `search "
                             "leaderboard`), its replicate of highest validation accuracy. "
                             "The document records which and why")
    chosen.add_argument("--trial", type=non_negative_int, metavar="NUMBER",
                        help="export this completed trial instead")
    export.add_argument("--out", default="best.json", type=output_file,
                        help="output file: .json, .yaml or .toml (default: best.json)")
    export.add_argument("--weights", type=output_folder, metavar="DIR",
                        help="also write the model as a folder to copy or upload to the "
                             "Hugging Face hub: the merged weights, the peft adapter (LoRA "
                             "trials), the model card, this export's document and the other "
                             "files docs/reference/export-folder.md lists ('The export folder "
                             "is a model repository')")

    predict = commands.add_parser(
        "predict", help="classify image files with a model written by `export --weights`",
        description="Classify image files with the model in a folder written by `search "
                    "export --weights DIR`, preparing each image as the trial evaluated its "
                    "test images (decoded as grayscale or RGB like the training data, resized "
                    "to the spec's image_size, normalised). Uses the merged model.safetensors "
                    "when the folder has it (no peft, no backbone file needed), else the peft "
                    "adapter on the spec's pretrained backbone. Runs on the first GPU if there "
                    "is one, else on the CPU. Needs no study or database.")
    predict.add_argument("--model", required=True, type=Path, metavar="DIR",
                         help="folder written by `search export --weights DIR` (with "
                              "search_export.json)")
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help=f"image files named {' '.join(PREDICT_EXTENSIONS)} (the "
                              "files an imagefolder dataset is read from; not .gif: only its "
                              "first frame would be seen)")
    predict.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                         help="classes to show per image, most probable first (default: 5; at "
                              "most the number of classes)")
    predict.add_argument("--format", choices=("table", "json"), default="table",
                         help="table: per image, its file then class and probability in %%; "
                              "json: a list of {image, predictions: [{class, index, "
                              "probability}]} (default: table)")
    for command in commands.choices.values():
        add_verbosity_flags(command)
    return parser
