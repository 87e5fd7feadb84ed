"""The `squeeze` command against a real service: the one-command quantize flow with its
progress output, JSON for scripts, and the documented exit codes."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from squeeze.cli.progress import Display, JobWatcher
from squeeze.cli.specs import parse_drop
from squeeze.client.models import Job, JobResult
from tests.cli.conftest import Live
from tests.factories import digits_arrays, distinct_copy

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_TARGETS_MISSED, EXIT_UNCHANGED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    output: Path

    @property
    def job_id(self) -> str:
        return next(word for word in self.out.split() if word.startswith("job_"))


@pytest.fixture(scope="module")
def quantized(
    live: Live, data_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """`squeeze quantize model.onnx --calib ... --eval ... --max-drop 1%`, run once."""
    model, data = data_files
    output = tmp_path_factory.mktemp("cli") / "digits.int8.onnx"
    code, out, err = live.run(
        "quantize", str(model), "--mode", "static", "--calib", str(data), "--eval", str(data),
        "--max-drop", "1%", "--allow-slower", "--batch-size", "8", "-o", str(output),
    )  # fmt: skip
    return Run(code, out, err, output)


def test_quantize_uploads_submits_watches_and_downloads_in_one_command(quantized: Run) -> None:
    assert quantized.code == EXIT_OK, quantized.out + quantized.err
    lines = quantized.out.splitlines()
    assert lines[0].startswith("uploaded digits.onnx") and "as mdl_" in lines[0]
    assert any(line.startswith("submitted job_") for line in lines)
    # not a terminal: one plain progress line per change, ending at 100%
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) >= 3
    assert "queued" in progress[0] or "running" in progress[0]
    assert progress[-1].startswith("[" + "#" * 30 + "] 100%  succeeded")
    assert any("1: quantize" in line for line in progress)
    assert any("(accuracy " in line for line in progress)  # the latest metric, from events
    assert "\r" not in quantized.out
    # the report, and the model saved where asked
    assert f"saved {quantized.output}" in quantized.out
    assert "original" in quantized.out and "after 1: quantize static" in quantized.out
    assert "targets met: yes" in quantized.out
    assert f"{quantized.job_id}: succeeded: improved" in quantized.out
    ort.InferenceSession(str(quantized.output), providers=["CPUExecutionProvider"])


def test_json_output_parses(live: Live, quantized: Run) -> None:
    code, out, _ = live.run("--json", "status", quantized.job_id)
    assert code == EXIT_OK
    job = Job.model_validate(json.loads(out))
    assert job.state == "succeeded" and job.targets_met is True

    code, out, _ = live.run("report", quantized.job_id, "--json")  # --json after the command
    assert JobResult.model_validate(json.loads(out)).verdict.targets_met

    code, out, _ = live.run("list", "--json", "--state", "succeeded")
    assert quantized.job_id in [item["id"] for item in json.loads(out)["items"]]


def test_report_prints_the_before_after_table(live: Live, quantized: Run) -> None:
    code, out, _ = live.run("report", quantized.job_id)
    assert code == EXIT_OK
    header = next(line for line in out.splitlines() if line.startswith("model"))
    assert header.split()[:3] == ["model", "size", "params"]
    assert "latency b8 ms (med/p95)" in header and header.rstrip().endswith("accuracy")
    assert "target max_metric_drop: limit 0.01" in out


def test_download_status_and_list_read_the_job(
    live: Live, quantized: Run, tmp_path: Path
) -> None:
    code, out, _ = live.run("download", quantized.job_id, "-o", str(tmp_path))
    assert code == EXIT_OK and Path(out.strip()) == tmp_path / "model.onnx"
    assert (tmp_path / "model.onnx").read_bytes() == quantized.output.read_bytes()
    code, out, _ = live.run("status", quantized.job_id)
    assert code == EXIT_OK and "succeeded: improved" in out
    assert "x smaller" in out  # the outcome's reason, in words
    code, out, _ = live.run("list")
    assert quantized.job_id in out and out.splitlines()[0].split() == [
        "job", "state", "progress", "method", "created"
    ]  # fmt: skip
    listed = json.loads(live.run("list", "--method", "quantize", "--json")[1])["items"]
    assert quantized.job_id in [job["id"] for job in listed]
    assert json.loads(live.run("list", "--method", "distill", "--json")[1])["items"] == []


def test_a_missed_target_exits_3(live: Live, quantized: Run, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "steps": [{"method": "quantize", "mode": "dynamic"}],
                "targets": {"max_size_bytes": 1000, "allow_slower": True},
            }
        )
    )
    # the model and data uploaded before, named by id this time
    earlier = json.loads(live.run("status", quantized.job_id, "--json")[1])["spec"]
    code, out, _ = live.run(
        "submit", str(spec), "--model", earlier["model_id"], "--eval", earlier["eval_dataset_id"],
        "-o", str(tmp_path / "missed.onnx"),
    )  # fmt: skip
    assert code == EXIT_TARGETS_MISSED, out
    assert "target max_size_bytes: limit 1,000" in out and "NOT met" in out
    assert "targets met: NO" in out


def test_a_result_that_changed_nothing_exits_4(
    live: Live, quantized: Run, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    # the CNN has no LSTM: dynamic quantization of LSTMs only quantizes nothing
    spec.write_text(
        yaml.safe_dump({"steps": [{"method": "quantize", "mode": "dynamic", "op_types": ["LSTM"]}]})
    )
    earlier = json.loads(live.run("status", quantized.job_id, "--json")[1])["spec"]
    # --allow-slower: the quantizer's graph clean-up may move the timing by noise, and
    # this test is about the outcome, not speed
    code, out, _ = live.run(
        "submit", str(spec), "--model", earlier["model_id"], "--eval", earlier["eval_dataset_id"],
        "--allow-slower", "-o", str(tmp_path / "unchanged.onnx"),
    )  # fmt: skip
    assert code == EXIT_UNCHANGED, out
    assert "succeeded: UNCHANGED" in out and "no node was quantized" in out
    code, out, _ = live.run("list", "--outcome", "unchanged", "--json")
    assert [item["outcome"] for item in json.loads(out)["items"]] == ["unchanged"]


def test_eval_data_without_labels_says_the_metric_is_agreement(
    live: Live, quantized: Run, tmp_path: Path
) -> None:
    images, _ = digits_arrays("test")
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, input=images)
    earlier = json.loads(live.run("status", quantized.job_id, "--json")[1])["spec"]
    _, out, _ = live.run(
        "quantize", earlier["model_id"], "--mode", "fp16", "--eval", str(unlabelled),
        "--allow-slower", "--detach",
    )  # fmt: skip
    job_id = next(word for word in out.split() if word.startswith("job_"))
    _, out, _ = live.run("watch", job_id)
    assert "note (metric_without_labels)" in out
    assert "agreement with the original" in out and "--labels NAME" in out


def test_a_failed_job_exits_1(live: Live, quantized: Run, data_files: tuple[Path, Path]) -> None:
    # quantizing the already quantized result fails in the worker (already_quantized)
    _, data = data_files
    code, out, err = live.run("quantize", str(quantized.output), "--eval", str(data), "-o", "x")
    assert code == EXIT_JOB_FAILED, out + err
    assert "failed: already_quantized" in out
    assert not Path("x").exists()


def test_a_cancelled_job_exits_1(live: Live, data_files: tuple[Path, Path]) -> None:
    # the test service runs the cpu queue only: a cuda job stays queued until cancelled
    model, data = data_files
    code, out, _ = live.run(
        "--json", "quantize", str(model), "--eval", str(data), "--device", "cuda", "--detach"
    )
    assert code == EXIT_OK
    job_id = json.loads(out)["id"]
    assert live.run("status", job_id)[0] == EXIT_OK  # queued: not final, not a failure
    code, out, _ = live.run("cancel", job_id)
    assert code == EXIT_OK and out.strip() == f"{job_id}: cancelled"
    assert live.run("watch", job_id)[0] == EXIT_JOB_FAILED
    assert live.run("status", job_id)[0] == EXIT_JOB_FAILED


def test_a_max_drop_of_1_is_refused_with_how_to_write_one_point() -> None:
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        parse_drop("1")
    message = str(raised.value)
    assert "1 would allow a drop of 100 points" in message
    assert "write one point as 1% or 0.01" in message
    assert parse_drop("1%") == parse_drop("0.01") == 0.01


def test_usage_and_api_errors_exit_2(live: Live, tmp_path: Path) -> None:
    code, _, err = live.run("status", "job_missing")
    assert code == EXIT_ERROR and "not_found (404)" in err
    assert live.run("quantize")[0] == EXIT_ERROR  # argparse: MODEL missing
    code, _, err = live.run("quantize", str(tmp_path / "absent.onnx"), "--eval", "x")
    assert code == EXIT_ERROR and "no such file" in err
    code, _, err = live.run("quantize", "mdl_x", "--eval", "ds_x", "--max-drop", "150%")
    assert code == EXIT_ERROR
    code, _, err = live.run("quantize", "mdl_x", "--eval", "ds_x", "--max-drop", "1")
    assert code == EXIT_ERROR
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not\n- a mapping\n")
    code, _, err = live.run("submit", str(bad))
    assert code == EXIT_ERROR and "must hold a mapping" in err
    code, _, err = Live(live.url, "sqz_wrong", live.settings).run("list")
    assert code == EXIT_ERROR and "unauthenticated (401)" in err


def test_batch_submits_a_folder_and_watches_it(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = data_files
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.onnx").write_bytes(model.read_bytes())
    distinct_copy(model, folder / "b.onnx", "b")
    (folder / "c.onnx").write_bytes(model.read_bytes())  # a's bytes: a's job
    (folder / "notes.txt").write_text("not a model")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [{"method": "quantize", "mode": "dynamic"}]}))
    out_dir = tmp_path / "out"

    code, out, err = live.run(
        "--json", "batch", str(spec), str(folder), "--eval", str(data), "--allow-slower",
        "-o", str(out_dir),
    )  # fmt: skip

    assert code == EXIT_OK, out + err
    batch = json.loads(out)
    assert batch["total"] == 2 and batch["counts"]["succeeded"] == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.squeezed.onnx", "b.squeezed.onnx"]
    assert "uploaded b.onnx" in err  # commentary on stderr
    assert "c.onnx holds the same bytes as a.onnx: one job" in err
    code, out, _ = live.run("status", batch["id"])
    assert code == EXIT_OK and out.startswith(f"batch {batch['id']}: finished, 2 jobs")
    # the models by the file names they were uploaded as, not only their ids
    shown = [line.split()[1] for line in out.splitlines() if line.startswith("job_")]
    assert "b.onnx" in shown and not any(name.startswith("mdl_") for name in shown)
    # run again into the same folder: refused before anything is submitted
    code, _, err = live.run(
        "batch", str(spec), str(folder), "--eval", str(data), "-o", str(out_dir)
    )
    assert code == EXIT_ERROR and f"{out_dir / 'a.squeezed.onnx'} already exists" in err
    assert "--force" in err


def test_upload_prints_ids(live: Live, data_files: tuple[Path, Path]) -> None:
    model, data = data_files
    code, out, _ = live.run("upload", str(model), str(data), "--json")
    assert code == EXIT_OK
    model_row, data_row = json.loads(out)
    assert model_row["id"].startswith("mdl_") and data_row["id"].startswith("ds_")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_bar_is_redrawn_in_place(live: Live, quantized: Run) -> None:
    from squeeze.client import Client

    screen = Terminal()
    with Client(live.url, api_key=live.token) as client:
        watcher = JobWatcher(client, Display(screen, live=screen.isatty()))
        job = client.get_job(quantized.job_id)
        watcher(job.model_copy(update={"state": "running", "progress": 0.5}))
        watcher(job)
    drawn = screen.getvalue()
    assert drawn.count("\r\033[K") == 2 and drawn.endswith("\n")
    assert " 50%  running" in drawn and "100%  succeeded" in drawn


def test_compress_runs_the_auto_recipe_toward_a_goal(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = data_files
    output = tmp_path / "digits.compressed.onnx"
    code, out, err = live.run(
        "--json", "compress", str(model), "--eval", str(data), "--goal", "2x",
        "--time-budget", "15", "-o", str(output),
    )  # fmt: skip
    assert code in (EXIT_OK, EXIT_TARGETS_MISSED, EXIT_UNCHANGED), out + err
    job = json.loads(out)
    assert job["spec"]["goal"]["speedup"] == 2.0
    assert job["spec"]["targets"]["min_speedup"] == 2.0
    [step] = job["result"]["steps"]
    assert step["method"] == "auto"
    assert step["details"]["budget"]["time_budget_s"] == 15
    assert output.exists()
    assert any(c["target"] == "min_speedup" for c in job["result"]["verdict"]["checks"])


def test_a_goal_is_a_speedup_fastest_a_latency_or_a_size() -> None:
    from squeeze.cli.specs import parse_goal

    assert parse_goal("2x") == {"speedup": 2.0}
    assert parse_goal("fastest") == {"fastest": True}
    assert parse_goal("5ms") == {"max_latency_ms": 5.0}
    assert parse_goal("5MB") == {"max_size_bytes": 5_000_000}
    with pytest.raises(argparse.ArgumentTypeError, match="above 1"):
        parse_goal("0.5x")


def test_an_upload_the_account_already_holds_is_reused_not_sent(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = data_files
    fresh = distinct_copy(model, tmp_path / "fresh.onnx", "fresh")
    code, out, _ = live.run("upload", str(fresh))
    assert code == EXIT_OK and "uploaded fresh.onnx" in out
    code, again, _ = live.run("upload", str(fresh))
    model_id = next(word for word in out.split() if word.startswith("mdl_"))
    assert code == EXIT_OK
    assert f"fresh.onnx is already uploaded as {model_id} (same sha256): reused" in again


def test_submit_downloads_the_result_like_quantize(
    live: Live, quantized: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"steps": [{"method": "quantize", "mode": "dynamic"}]}))
    earlier = json.loads(live.run("status", quantized.job_id, "--json")[1])["spec"]
    argv = ("submit", str(spec), "--model", earlier["model_id"],
            "--eval", earlier["eval_dataset_id"], "--allow-slower")  # fmt: skip

    code, out, err = live.run(*argv)

    assert code == EXIT_OK, out + err
    saved = tmp_path / "digits.squeezed.onnx"  # named after the uploaded file, here
    assert "saved digits.squeezed.onnx" in out and saved.is_file()
    ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    # the same command again would overwrite it: refused before a job is submitted
    jobs_before = len(json.loads(live.run("list", "--json", "--limit", "100")[1])["items"])
    code, out, err = live.run(*argv)
    assert code == EXIT_ERROR
    assert "digits.squeezed.onnx already exists" in err and "--force" in err
    assert len(json.loads(live.run("list", "--json", "--limit", "100")[1])["items"]) == jobs_before


def test_download_never_overwrites_a_file_without_force(
    live: Live, quantized: Run, tmp_path: Path
) -> None:
    target = tmp_path / "mine.onnx"
    target.write_bytes(b"my own file")

    code, _, err = live.run("download", quantized.job_id, "-o", str(target))

    assert code == EXIT_ERROR
    assert f"{target} already exists" in err and "--force" in err
    assert target.read_bytes() == b"my own file"
    # into a folder already holding model.onnx: the same
    (tmp_path / "model.onnx").write_bytes(b"older")
    assert live.run("download", quantized.job_id, "-o", str(tmp_path))[0] == EXIT_ERROR
    assert (tmp_path / "model.onnx").read_bytes() == b"older"
    code, _, _ = live.run("download", quantized.job_id, "-o", str(target), "--force")
    assert code == EXIT_OK and target.read_bytes() == quantized.output.read_bytes()


def test_an_unknown_artifact_name_lists_the_real_ones(live: Live, quantized: Run) -> None:
    code, _, err = live.run("download", quantized.job_id, "--name", "modle.onnx")
    assert code == EXIT_ERROR
    assert f"job {quantized.job_id} has no artifact 'modle.onnx'; its artifacts: " in err
    assert "model.onnx" in err and "report.html" in err


def test_cancel_on_a_final_job_says_it_was_already_final(live: Live, quantized: Run) -> None:
    code, out, _ = live.run("cancel", quantized.job_id)
    assert code == EXIT_OK
    assert out.strip() == (
        f"{quantized.job_id} was already final (succeeded: improved): nothing to cancel"
    )
    job = json.loads(live.run("status", quantized.job_id, "--json")[1])
    assert job["state"] == "succeeded" and job["cancel_requested"] is False


def test_progress_never_goes_backwards(live: Live, quantized: Run) -> None:
    from squeeze.client import Client

    screen = io.StringIO()
    with Client(live.url, api_key=live.token) as client:
        watcher = JobWatcher(client, Display(screen, live=False))
        job = client.get_job(quantized.job_id)
        for progress in (0.6, 0.2, 0.7):  # a retried attempt starts again from 0
            watcher(job.model_copy(update={"state": "running", "progress": progress}))
    shown = [line.split("]")[1].split()[0] for line in screen.getvalue().splitlines()]
    assert shown == ["60%", "70%"]  # 20% was drawn as 60% again: no new line
