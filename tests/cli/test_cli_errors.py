"""The CLI's own errors, each in the user's words: the flag is named (not the JSON field
the CLI writes for it), local files are checked before anything is uploaded, an
unreachable service names the URL tried, a missing key says where the key is."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from squeeze.cli import main
from squeeze.client import Client
from tests.cli.conftest import Live, free_port

EXIT_ERROR = 2


def stored_models(live: Live) -> int:
    with Client(live.url, live.token) as client:
        return len(client.list_models(limit=100).items)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# --- local files, before any upload ----------------------------------------------------


def test_a_missing_model_file_names_the_argument(live: Live, tmp_path: Path) -> None:
    code, _, err = live.run("quantize", str(tmp_path / "absent.onnx"), "--eval", "ds_x")

    assert code == EXIT_ERROR
    absent = tmp_path / "absent.onnx"
    assert err == f"squeeze: MODEL {absent}: no such file (nor a model id, mdl_...)\n"


def test_a_dataset_given_as_the_model_says_so_and_uploads_nothing(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    _, data = data_files
    before = stored_models(live)

    code, _, err = live.run("quantize", str(data), "--eval", str(data))

    assert code == EXIT_ERROR
    assert err.startswith(f"squeeze: MODEL {data}: this is a dataset (an .npz of arrays ")
    assert "give the .onnx file as the model and this file as --eval" in err
    assert stored_models(live) == before


def test_a_model_given_as_data_names_the_flag_and_uploads_nothing(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    model, _ = data_files
    before = stored_models(live)

    code, _, err = live.run("quantize", str(model), "--eval", str(model))

    assert code == EXIT_ERROR
    assert err.startswith(
        f"squeeze: --eval {model}: this is an ONNX model, not a dataset: --eval takes an .npz"
    )
    assert stored_models(live) == before  # the model was not uploaded either


def test_a_file_that_is_not_onnx_is_refused_before_upload(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = data_files
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00state" + b"\x00" * 64)

    code, _, err = live.run("quantize", str(checkpoint), "--eval", str(data))

    assert code == EXIT_ERROR
    assert err == (
        f"squeeze: MODEL {checkpoint}: not an ONNX model: not ONNX (a PyTorch checkpoint? "
        "export it to ONNX first)\n"
    )


def test_a_calibration_file_that_is_not_npz_names_calib(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = data_files
    text = tmp_path / "calib.csv"
    text.write_text("a,b\n1,2\n")

    code, _, err = live.run("quantize", str(model), "--eval", str(data), "--calib", str(text))

    assert code == EXIT_ERROR
    assert err.startswith(f"squeeze: --calib {text}: not an .npz dataset:")
    assert "squeeze dataset" in err


def test_a_dataset_id_given_as_the_model_is_named(live: Live) -> None:
    code, _, err = live.run("quantize", "ds_abc", "--eval", "ds_abc")

    assert code == EXIT_ERROR
    assert err == (
        "squeeze: MODEL ds_abc: no such file (nor a model id, mdl_...); ds_abc is a dataset id\n"
    )


def test_without_eval_data_the_flag_is_asked_for_before_upload(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    model, _ = data_files
    before = stored_models(live)

    code, _, err = live.run("quantize", str(model))

    assert code == EXIT_ERROR
    assert err.startswith("squeeze: --eval is required: the evaluation data every metric")
    assert stored_models(live) == before


def test_upload_refuses_a_file_that_is_neither_a_model_nor_a_dataset(
    live: Live, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"not": "a model"}')

    code, _, err = live.run("upload", str(notes))

    assert code == EXIT_ERROR
    assert err == (
        f"squeeze: {notes}: neither an ONNX model nor an .npz dataset: a text file (JSON or "
        "YAML?)\n"
    )


# --- the service's spec errors in flag words ---------------------------------------------


def test_a_spec_error_of_a_flag_built_job_names_the_flag(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    model, data = data_files

    code, _, err = live.run("prune", str(model), "--eval", str(data))

    assert code == EXIT_ERROR
    assert err == (
        "squeeze: invalid_request (422): prune trains the model: set --train (or --epochs 0 "
        "for pruning without fine-tuning)\n"
    )


def test_a_spec_file_s_errors_keep_the_fields_it_wrote(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = data_files
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [{"method": "quantise"}], "targets": {"max_drop": 1}}))

    code, _, err = live.run("submit", str(spec), "--model", str(model), "--eval", str(data))

    assert code == EXIT_ERROR
    lines = err.splitlines()
    assert lines[-3] == "squeeze: invalid_request (422): 2 errors"  # one per line
    assert lines[-2] == (
        "  - `steps[0].method` must be one of quantize, prune, distill, search, auto; got "
        "`quantise` — did you mean `quantize`?"
    )
    assert lines[-1].startswith(
        "  - `targets.max_drop`: unknown field of `targets`; did you mean `max_metric_drop`?"
    )


# --- the service itself ----------------------------------------------------------------


def test_an_unreachable_service_names_the_url_and_how_to_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SQUEEZE_URL", raising=False)
    url = f"http://127.0.0.1:{free_port()}"

    code, _, err = run_cli("--url", url, "--timeout", "2", "list")

    assert code == EXIT_ERROR
    assert err == (
        f"squeeze: cannot reach the service at {url} (from --url): connection refused "
        "(nothing listens there)\n"
        "  set its URL with --url URL or the SQUEEZE_URL environment variable; to run one "
        "here: squeeze serve\n"
    )


def test_a_missing_key_says_where_the_embedded_key_file_is(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQUEEZE_API_KEY", raising=False)
    monkeypatch.delenv("SQUEEZE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    code, _, err = run_cli("--url", live.url, "list")

    assert code == EXIT_ERROR
    assert err == (
        f"squeeze: no API key given ({live.url} needs one): pass --api-key sqz_... or set "
        "SQUEEZE_API_KEY\n"
        "  a service on the embedded default writes its admin key to <data dir>/admin-api-key "
        "(var/admin-api-key unless SQUEEZE_DATA_DIR says otherwise)\n"
    )


def test_a_missing_key_points_at_the_key_file_when_it_is_here(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQUEEZE_API_KEY", raising=False)
    monkeypatch.setenv("SQUEEZE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin-api-key").write_text("sqz_local\n")

    code, _, err = run_cli("--url", live.url, "list")

    assert code == EXIT_ERROR
    key_file = tmp_path / "data" / "admin-api-key"
    assert f"  {key_file} holds the admin key of a service started in this folder: " in err
    assert f"export SQUEEZE_API_KEY=$(cat {key_file})" in err


def test_a_wrong_key_says_it_is_not_known(live: Live) -> None:
    code, _, err = Live(live.url, "sqz_wrong", live.settings).run("list")

    assert code == EXIT_ERROR
    assert err.startswith("squeeze: unauthenticated (401): the API key is not valid")
    assert "the key from --api-key / SQUEEZE_API_KEY is not one" in err


def test_a_dataset_that_does_not_fit_names_the_flag_and_the_file(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    import numpy as np

    model, _ = data_files
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 1, 8, 8), dtype=np.float32))

    code, _, err = live.run("quantize", str(model), "--eval", str(wrong))

    assert code == EXIT_ERROR
    last = err.splitlines()[-1]
    assert last.startswith("squeeze: incompatible_data (422): --eval wrong.npz (ds_")
    assert "model input 'input' needs an array named 'input'; the dataset has ['x']" in err
