"""The command line: `squeeze <command> ...` (argparse, no other dependency)."""

from __future__ import annotations

import argparse
import os

from squeeze.cli import commands, lifecycle, serve
from squeeze.cli.exit_codes import EPILOG
from squeeze.cli.specs import (
    parse_batch_sizes,
    parse_drop,
    parse_floats,
    parse_goal,
    parse_image_size,
    parse_size,
    parse_target,
)
from squeeze.client.client import DEFAULT_URL

DESCRIPTION = """squeeze: compress neural networks with the squeeze service.

  squeeze quantize model.onnx --calib data.npz --eval data.npz --max-drop 1%

uploads the model and data, submits the job, shows its progress, prints the before/after
report and downloads the compressed model. The service's URL and API key come from
--url/--api-key or SQUEEZE_URL/SQUEEZE_API_KEY."""


def _connection(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after the command's name. Under a command
    their default is SUPPRESS, so a value given before the command is kept."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("service")
    group.add_argument(
        "--url",
        default=default(os.environ.get("SQUEEZE_URL", DEFAULT_URL)),
        help=f"the service (env SQUEEZE_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--api-key",
        default=default(os.environ.get("SQUEEZE_API_KEY")),
        help="an API key, sqz_... (env SQUEEZE_API_KEY)",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON for scripts"
    )
    group.add_argument(
        "--timeout", type=float, default=default(60.0), help="seconds per HTTP request (60)"
    )


def _data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (a local file is uploaded; an id is used as it is)")
    group.add_argument("--eval", metavar="NPZ|ID", help="evaluation data (required by jobs)")
    group.add_argument("--calib", metavar="NPZ|ID", help="calibration data (default: --eval)")
    group.add_argument("--train", metavar="NPZ|ID", help="training data (steps that train)")


def _job_flags(parser: argparse.ArgumentParser) -> None:
    task = parser.add_argument_group("task and targets")
    task.add_argument(
        "--task", choices=["classification", "sequence", "mask", "embedding", "regression"]
    )
    task.add_argument("--labels", metavar="ARRAY", help="the label array's name (label)")
    task.add_argument(
        "--metric",
        metavar="NAME",
        help="the metric the targets judge (default per task: accuracy, exact_match, iou, "
        "cosine_similarity, r2; see docs/api.md)",
    )
    task.add_argument(
        "--max-drop",
        type=parse_drop,
        metavar="DROP",
        help="largest metric drop: 1%% = 0.01 = one accuracy point",
    )
    task.add_argument(
        "--relative-drop", action="store_true", help="--max-drop relative to the original"
    )
    task.add_argument("--max-latency-ms", type=float, metavar="MS")
    task.add_argument("--max-size", type=parse_size, metavar="SIZE", help="e.g. 300KB, 5MB")
    task.add_argument(
        "--no-metric-guard",
        action="store_true",
        help="without --max-drop, accept any metric drop (the default guard refuses a "
        "relative drop above 1%%)",
    )
    task.add_argument(
        "--allow-slower", action="store_true", help="accept a result slower at some batch size"
    )
    task.add_argument("--device", choices=["auto", "cpu", "cuda"])
    task.add_argument(
        "--target",
        action="append",
        type=parse_target,
        metavar="RUNTIME[:DEVICE]",
        help="a deployment target, e.g. openvino or onnxruntime:cuda (repeat for several: "
        "each gets its own model and verdict)",
    )
    task.add_argument(
        "--batch-size", type=int, metavar="N", help="the job's batch size (latency at 1 and N)"
    )
    task.add_argument(
        "--batch-sizes",
        type=parse_batch_sizes,
        metavar="N,M",
        help="every batch size the model is served at (default: 1 and --batch-size); "
        "not slower and --max-latency-ms must hold at each",
    )
    task.add_argument("--seed", type=int)
    run = parser.add_argument_group("submission")
    run.add_argument("--webhook-url", metavar="URL", help="POSTed the job record when it ends")
    run.add_argument("--idempotency-key", metavar="KEY")
    run.add_argument(
        "--detach", action="store_true", help="return once submitted (do not watch)"
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="where to save the result (default: MODEL.<method>.onnx here, for a model "
        "given as a file or an id)",
    )
    run.add_argument(
        "--force", action="store_true", help="overwrite an existing output file"
    )


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    _connection(connection, suppress=True)
    parser = argparse.ArgumentParser(
        prog="squeeze",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, parents=[connection], epilog=EPILOG
        )

    p = command("upload", "upload models (.onnx, archives) and datasets (.npz)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--kind", choices=["auto", "model", "dataset"], default="auto")
    p.set_defaults(handler=commands.upload)

    p = command(
        "submit", "submit a job spec from a YAML or JSON file, watch it, download the result"
    )
    p.add_argument("spec", metavar="SPEC", help="a job spec (.yaml, .yml or .json)")
    p.add_argument("--model", metavar="ONNX|ID", help="the model (overrides the spec's)")
    _data_flags(p)
    _job_flags(p)
    p.set_defaults(handler=commands.submit)

    p = command("quantize", "upload a model and its data, quantize it, watch, download")
    p.add_argument("model", metavar="MODEL", help="an .onnx file (or a model id)")
    p.add_argument(
        "--mode",
        choices=["auto", "dynamic", "static", "fp16", "int4", "qat"],
        default="auto",
        help="(auto)",
    )
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (qat)")
    _data_flags(p)
    _job_flags(p)
    p.set_defaults(handler=commands.quantize)

    p = command("prune", "upload a model and its data, prune and fine-tune it, watch, download")
    p.add_argument("model", metavar="MODEL", help="an .onnx file (or a model id)")
    p.add_argument(
        "--kind", choices=["unstructured", "structured", "n_m"], default="unstructured"
    )
    p.add_argument("--sparsity", type=float, help="share of weights/channels to remove (0.5)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (2; 0 skips fine-tuning)")
    _data_flags(p)
    _job_flags(p)
    p.set_defaults(handler=commands.prune)

    p = command(
        "compress",
        "compress a model toward a goal with every method (auto), watch, download",
    )
    p.add_argument("model", metavar="MODEL", help="an .onnx file (or a model id)")
    p.add_argument(
        "--goal",
        type=parse_goal,
        default={"fastest": True},
        metavar="GOAL",
        help="2x (twice as fast at every batch size), fastest (default), 5ms, 5MB",
    )
    p.add_argument(
        "--time-budget", type=float, metavar="S", help="seconds the recipe may spend (1800)"
    )
    _data_flags(p)
    _job_flags(p)
    p.set_defaults(handler=commands.compress)

    p = command("batch", "submit one spec over every model in a folder, then watch")
    p.add_argument("spec", metavar="SPEC", help="a job spec (.yaml/.json) without model_id")
    p.add_argument("folder", metavar="FOLDER")
    p.add_argument("--pattern", default="*.onnx", help="which files are models (*.onnx)")
    _data_flags(p)
    _job_flags(p)
    p.set_defaults(handler=commands.batch)

    p = command("status", "a job's (or a batch's, bat_...) state")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=commands.status)

    p = command("watch", "follow a job (or batch) until it ends, with a progress bar")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=commands.watch)

    p = command("report", "the before/after table of a finished job")
    p.add_argument("job", metavar="JOB")
    p.set_defaults(handler=commands.report)

    p = command("download", "download a job's compressed model (or another artifact)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--name", help="the artifact (default: the model)")
    p.add_argument("-o", "--output", metavar="PATH", default=".", help="file or folder (.)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=commands.download)

    p = command("list", "the newest jobs (or batches)")
    p.add_argument(
        "--state", choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    p.add_argument(
        "--outcome",
        choices=["improved", "unchanged", "targets_missed", "failed", "cancelled"],
        help="only final jobs that came to this",
    )
    p.add_argument(
        "--method",
        choices=["quantize", "prune", "distill", "search", "auto"],
        help="only jobs with a step of this method",
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--batches", action="store_true", help="list batches instead of jobs")
    p.set_defaults(handler=commands.list_)

    p = command("cancel", "cancel a queued or running job (a final one is left as it is)")
    p.add_argument("job", metavar="JOB")
    p.set_defaults(handler=commands.cancel)

    p = command(
        "inspect",
        "which arrays a dataset for MODEL needs (inputs, shapes, dtypes, labels); a .npz: "
        "its arrays",
    )
    p.add_argument("target", metavar="MODEL", help="an .onnx file, a model id, or a .npz")
    p.set_defaults(handler=commands.inspect)

    p = command("dataset", "build an .npz dataset from images, a CSV or .npy files")
    source = p.add_argument_group("source (one)")
    source.add_argument(
        "--images", metavar="FOLDER", help="images; sub-folder names are the classes (labels)"
    )
    source.add_argument("--csv", metavar="FILE", help="a CSV with a header row")
    source.add_argument(
        "--input",
        action="append",
        metavar="NAME=FILE.npy",
        help="one array per model input (repeat)",
    )
    p.add_argument("-o", "--output", metavar="NPZ", required=True, help="the .npz to write")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    p.add_argument(
        "--input-name", default="input", help="the array of --images / --csv (the model's input)"
    )
    p.add_argument("--labels-name", default="label", help="the label array's name (label)")
    p.add_argument("--labels", metavar="FILE.npy", help="labels from a .npy")
    images = p.add_argument_group("images: the preprocessing recipe")
    images.add_argument(
        "--size", type=parse_image_size, default=(224, 224), metavar="HxW",
        help="resize to, e.g. 224 or 32x64 (224)",
    )  # fmt: skip
    images.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw", help="(nchw)")
    images.add_argument(
        "--scale", type=float, default=255.0, help="divide pixels by this first (255)"
    )
    images.add_argument(
        "--mean", type=parse_floats, default=[0.0], metavar="M[,M,M]",
        help="subtract after scaling, per channel (0)",
    )  # fmt: skip
    images.add_argument(
        "--std", type=parse_floats, default=[1.0], metavar="S[,S,S]",
        help="then divide, per channel (1)",
    )  # fmt: skip
    images.add_argument("--grayscale", action="store_true", help="one channel")
    table = p.add_argument_group("csv")
    table.add_argument("--label-column", metavar="COLUMN", help="the column holding labels")
    table.add_argument(
        "--features", metavar="A,B,...", help="the feature columns (default: all others)"
    )
    table.add_argument("--dtype", default="float32", choices=["float32", "float64", "int64"])
    p.set_defaults(handler=commands.dataset)

    lifecycle.register(command)
    serve.register(command)
    return parser
