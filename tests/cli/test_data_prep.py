"""`squeeze inspect` says which arrays a dataset needs; `squeeze dataset` builds the
`.npz` from a folder of images, a CSV or one `.npy` per input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from squeeze.cli import main
from tests.cli.conftest import Live
from tests.factories import digits_arrays

EXIT_OK, EXIT_ERROR = 0, 2


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of flat-coloured 20x10 images: cat red, dog blue."""
    root = tmp_path / "images"
    for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (20, 10), colour).save(root / name / f"{index}.png")
    (root / "README.txt").write_text("not an image")
    return root


# --- inspect ----------------------------------------------------------------------------


def test_inspect_lists_the_arrays_a_dataset_for_the_model_needs(
    data_files: tuple[Path, Path],
) -> None:
    model, _ = data_files

    code, out, _ = run_cli("inspect", str(model))

    assert code == EXIT_OK
    lines = out.splitlines()
    needed = lines[lines.index(next(line for line in lines if line.startswith("a dataset"))) :]
    assert any(line.split()[:3] == ["input", "float32", "(N,"] for line in needed), out
    assert "    classification  int64 (N,): the class index of each sample (0..9)" in out
    assert "    sequence        int64 (N, L): each sample's label sequence, padded with -1" in out
    assert "    embedding       none: the vectors are compared with the original model's" in out
    assert "squeeze dataset --images FOLDER --size 8x8 --layout nchw --grayscale" in out


def test_inspect_shows_symbolic_axes_by_name(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", "sequence"])],
    )
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph), path)

    code, out, _ = run_cli("inspect", str(path))

    assert code == EXIT_OK
    assert "  ids                  int64    (batch, sequence)" in out
    assert "  ids                  int64    (N, sequence)" in out
    assert "(symbolic axes sequence: any size the model takes, one size per file)" in out


def test_inspect_of_a_stored_model_reads_its_record(
    live: Live, data_files: tuple[Path, Path]
) -> None:
    model, _ = data_files
    code, out, _ = live.run("--json", "upload", str(model))
    model_id = json.loads(out)[0]["id"]

    code, out, _ = live.run("inspect", model_id)

    assert code == EXIT_OK
    assert out.startswith(f"model {model_id} (")
    assert "classification  int64 (N,)" in out


def test_inspect_of_a_dataset_lists_its_arrays_without_numpy(
    data_files: tuple[Path, Path],
) -> None:
    _, data = data_files

    code, out, _ = run_cli("inspect", str(data))

    assert code == EXIT_OK
    assert "  input                float32  (64, 1, 8, 8)" in out
    assert "  label                int64    (64,)" in out


# --- dataset ------------------------------------------------------------------------------


def test_a_folder_of_images_becomes_nchw_arrays_with_labels_from_sub_folders(
    image_folder: Path, tmp_path: Path
) -> None:
    output = tmp_path / "data.npz"

    code, out, err = run_cli(
        "dataset", "--images", str(image_folder), "--size", "4x6", "--mean", "0.5",
        "--std", "0.25", "--input-name", "pixels", "-o", str(output),
    )  # fmt: skip

    assert code == EXIT_OK, err
    with np.load(output) as arrays:
        pixels, labels = arrays["pixels"], arrays["label"]
    assert pixels.shape == (6, 3, 4, 6) and pixels.dtype == np.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # red cat: (1 - 0.5) / 0.25 = 2 in channel 0, (0 - 0.5) / 0.25 = -2 elsewhere
    assert np.allclose(pixels[0, 0], 2.0) and np.allclose(pixels[0, 2], -2.0)
    assert np.allclose(pixels[3, 2], 2.0)
    assert json.loads((tmp_path / "data.classes.json").read_text()) == {"0": "cat", "1": "dog"}
    assert "classes: 0=cat, 1=dog" in out


def test_images_can_be_laid_out_nhwc_in_grayscale(image_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "gray.npz"

    code, _, err = run_cli(
        "dataset", "--images", str(image_folder / "cat"), "--size", "5", "--layout", "nhwc",
        "--grayscale", "-o", str(output),
    )  # fmt: skip

    assert code == EXIT_OK, err
    with np.load(output) as arrays:
        assert sorted(arrays.files) == ["input"]  # no sub-folders: no labels
        assert arrays["input"].shape == (3, 5, 5, 1)


def test_a_csv_becomes_features_and_labels(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("a,b,kind\n1,2,dog\n3,4,cat\n5,6,dog\n")
    output = tmp_path / "rows.npz"

    code, _, err = run_cli(
        "dataset", "--csv", str(table), "--label-column", "kind", "-o", str(output)
    )

    assert code == EXIT_OK, err
    with np.load(output) as arrays:
        assert arrays["input"].tolist() == [[1, 2], [3, 4], [5, 6]]
        assert arrays["input"].dtype == np.float32
        assert arrays["label"].tolist() == [1, 0, 1]  # sorted names: cat 0, dog 1


def test_a_csv_cell_that_is_not_a_number_names_its_line_and_column(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("a,b,y\n1,2,0\n3,x,1\n")

    code, _, err = run_cli(
        "dataset", "--csv", str(table), "--label-column", "y", "-o", str(tmp_path / "o.npz")
    )

    assert code == EXIT_ERROR
    assert err == (
        "squeeze: --csv rows.csv line 3: column b holds 'x', not a number (list the numeric "
        "columns with --features)\n"
    )


def test_an_unknown_label_column_lists_the_columns(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("a,b,y\n1,2,0\n")

    code, _, err = run_cli(
        "dataset", "--csv", str(table), "--label-column", "label", "-o", str(tmp_path / "o.npz")
    )

    assert code == EXIT_ERROR
    assert err == "squeeze: --label-column label: no such column in rows.csv (columns: a, b, y)\n"


def test_one_npy_per_input_with_labels_fits_the_model_it_was_built_for(
    live: Live, data_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model, _ = data_files
    images, targets = digits_arrays("test")
    np.save(tmp_path / "input.npy", images[:32])
    np.save(tmp_path / "label.npy", targets[:32])
    output = tmp_path / "built.npz"

    code, _, err = run_cli(
        "dataset", "--input", f"input={tmp_path / 'input.npy'}",
        "--labels", str(tmp_path / "label.npy"), "-o", str(output),
    )  # fmt: skip
    assert code == EXIT_OK, err

    code, out, err = live.run(
        "--json", "quantize", str(model), "--mode", "dynamic", "--eval", str(output), "--detach"
    )
    assert code == EXIT_OK, err  # the service checked that the dataset fits the model
    assert json.loads(out)["state"] in ("queued", "running", "succeeded")


def test_arrays_of_different_sample_counts_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int64))

    code, _, err = run_cli(
        "dataset", "--input", f"x={tmp_path / 'x.npy'}", "--labels", str(tmp_path / "y.npy"),
        "-o", str(tmp_path / "o.npz"),
    )  # fmt: skip

    assert code == EXIT_ERROR
    assert err == (
        "squeeze: the arrays must hold the same number of samples on axis 0; they hold: "
        "x 4, label 5\n"
    )


def test_an_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    (tmp_path / "o.npz").write_bytes(b"keep")

    code, _, err = run_cli(
        "dataset", "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "o.npz")
    )

    assert code == EXIT_ERROR
    assert err == f"squeeze: -o {tmp_path / 'o.npz'}: exists; pass --force to overwrite it\n"
    assert (tmp_path / "o.npz").read_bytes() == b"keep"


def test_a_missing_image_library_is_named_with_how_to_install_it(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # import fails as if not installed

    code, _, err = run_cli("dataset", "--images", str(image_folder), "-o", str(tmp_path / "o.npz"))

    assert code == EXIT_ERROR
    assert err == (
        "squeeze: squeeze dataset needs the pillow package: pip install pillow (the light "
        "client leaves it out)\n"
    )


def test_the_cli_imports_no_numpy_onnx_pillow_or_torch() -> None:
    heavy = ("numpy", "onnx", "PIL", "torch")
    code = (
        "import sys, squeeze.cli, squeeze.cli.commands, squeeze.cli.files; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert found.stdout.strip() == "[]"
