"""Results that say what they are: every image mode decoded to its 8-bit values, evaluations that refuse what
they cannot measure (one class, an output path in the way) or say what they measured (an unfinished run, a k
above the bank), and corrupt files counted once."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from common.data import DataConfig, build_dataset
from evaluation import knn, linear, neural_collapse
from stochcon.analysis import __main__ as stochcon_analysis
from tests.eval_data import save_random_backbone, write_image_folder
from tests.trainer_runs import launch, run

# ------------------------------------------------------------------------------------------ image modes

GRID = np.arange(16).reshape(4, 4)


def sixteen_bit_to_8(values: np.ndarray) -> np.ndarray:
    """The 8-bit level nearest to each 16-bit intensity, clipped to [0, 65535] (common.data.pixels)."""
    return np.rint(np.clip(values.astype(np.float64), 0, 65535) * 255 / 65535).astype(np.uint8)


def mode_cases() -> dict[str, tuple[Image.Image, str, np.ndarray]]:
    """PIL mode -> (image, file suffix, the 8-bit pixels the data set must decode it to)."""
    bits = GRID % 3 == 0
    palette = np.array([[10 * i, 255 - 10 * i, (37 * i) % 256] for i in range(16)], dtype=np.uint8)
    paletted = Image.fromarray(GRID.astype(np.uint8), mode="L").convert("P")
    paletted.putpalette(palette.flatten().tolist())
    rgb = np.stack([GRID * 16, 255 - GRID * 16, GRID * 7], axis=-1).astype(np.uint8)
    rgba = np.concatenate([rgb, (GRID[..., None] * 5).astype(np.uint8)], axis=-1)
    sixteen = (GRID * 4369).astype(np.uint16)  # 0 .. 65535 in 16 steps; 8 bits clip all but 0 to 255
    sixteen[0, 1] = 1000  # the example: 1000 / 257 = 3.9, level 4, not 255
    thirty_two = (GRID.astype(np.int64) * 5000 - 10000).astype(np.int32)  # -10000 .. 65000: below 0 clips to 0
    thirty_two[3, 3] = 70000  # above 16 bits: clips to 255
    floats = (GRID / 10 - 0.25).astype(np.float32)  # -0.25 .. 1.25: [0, 1] scaled, outside clipped
    floats[0, 0] = np.nan
    cmyk = np.zeros((4, 4, 4), dtype=np.uint8)
    cmyk[0, :] = (255, 0, 0, 0)  # cyan ink: no red
    cmyk[1, :] = (0, 255, 0, 0)  # magenta: no green
    cmyk[2, :] = (0, 0, 0, 255)  # black
    cmyk_rgb = np.full((4, 4, 3), 255, dtype=np.uint8)  # row 3: no ink, white
    cmyk_rgb[0, :] = (0, 255, 255)
    cmyk_rgb[1, :] = (255, 0, 255)
    cmyk_rgb[2, :] = (0, 0, 0)
    return {
        "1": (Image.fromarray(bits), "png", np.where(bits, 255, 0).astype(np.uint8)),
        "L": (Image.fromarray((GRID * 17).astype(np.uint8)), "png", (GRID * 17).astype(np.uint8)),
        "P": (paletted, "png", palette[GRID]),
        "RGB": (Image.fromarray(rgb), "png", rgb),
        "RGBA": (Image.fromarray(rgba), "png", rgb),  # the alpha dropped, as torchvision's ImageFolder does
        "I;16": (Image.fromarray(sixteen), "png", sixteen_bit_to_8(sixteen)),
        "I": (Image.fromarray(thirty_two), "tif", sixteen_bit_to_8(thirty_two)),
        "F": (Image.fromarray(floats), "tif",
              np.rint(np.clip(np.nan_to_num(floats, nan=0.0), 0, 1) * 255).astype(np.uint8)),
        "CMYK": (Image.fromarray(cmyk, mode="CMYK"), "tif", cmyk_rgb),
    }


@pytest.mark.parametrize("mode", list(mode_cases()))
def test_every_image_mode_of_a_folder_decodes_to_its_8_bit_values(tmp_path, mode):
    image, suffix, expected = mode_cases()[mode]
    assert image.mode == mode
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / f"0.{suffix}")
    assert Image.open(tmp_path / "a" / f"0.{suffix}").mode == mode  # the file holds the mode under test
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    decoded, _ = dataset[0]
    assert decoded.mode == ("RGB" if expected.ndim == 3 else "L")
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_a_16_bit_image_among_colour_images_keeps_its_levels(tmp_path):
    """A folder of RGB images with one 16-bit PNG decodes to RGB: the grey levels, in each channel, scaled."""
    sixteen = (GRID * 4369).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    Image.fromarray(sixteen).save(tmp_path / "a" / "1.png")
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    decoded, _ = dataset[1]
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(sixteen_bit_to_8(sixteen)[..., None], 3, axis=2))


def test_a_16_bit_pgm_opens_as_mode_i_and_keeps_its_levels(tmp_path):
    """Pillow opens a 16-bit PGM as mode I: the 16-bit range of I is that of such files."""
    sixteen = (GRID * 4369).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(sixteen).save(tmp_path / name / "0.pgm")
    assert Image.open(tmp_path / "a" / "0.pgm").mode == "I"
    decoded, _ = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")[0]
    np.testing.assert_array_equal(np.asarray(decoded), sixteen_bit_to_8(sixteen))


# ------------------------------------------------------------------------------------------ evaluation commands


def eval_args(backbone, root, output, *extra) -> list[str]:
    return [f"checkpoint={backbone}", "data.name=image_folder", f"data.root={root}", "device=cpu", "num_workers=0",
            "progress_bar=false", f"output={output}", *extra]


def one_line_error(stderr: str, needle: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root, {"train": 6, "val": 3}, classes=2)
    return root


@pytest.fixture
def backbone(tmp_path):
    return save_random_backbone(tmp_path / "random")


def test_a_one_class_training_folder_is_refused_by_every_labelled_evaluation(tmp_path, backbone, capsys):
    """One class: every vote and every classifier is right (top-1 1.0 whatever the features): refused."""
    root = tmp_path / "one_class"
    write_image_folder(root, {"train": 6, "val": 3}, classes=1)
    output = tmp_path / "result.json"
    commands = {"knn": (knn, ["k=[3]"]), "linear": (linear, ["probe.epochs=1"]),
                "linear on augmented images": (linear, ["augment=true", "probe.epochs=1"]),
                "neural_collapse": (neural_collapse, [])}
    for name, (command, extra) in commands.items():
        assert command.main(eval_args(backbone, root, output, *extra)) == 2, name
        assert one_line_error(capsys.readouterr().err, "1 class"), name
        assert not output.exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_naming_a_folder_is_one_line_and_leaves_no_stray_file(tmp_path, folder, backbone, capsys,
                                                                        overwrite):
    taken = tmp_path / "taken"
    taken.mkdir()
    before = sorted(tmp_path.iterdir())
    assert knn.main(eval_args(backbone, folder, taken, "k=[3]", f"overwrite={str(overwrite).lower()}")) == 2
    assert one_line_error(capsys.readouterr().err, "is a folder")
    assert sorted(tmp_path.iterdir()) == before and not any(taken.iterdir())
    blocked = tmp_path / "a_file"
    blocked.write_text("mine")
    assert knn.main(eval_args(backbone, folder, blocked / "result.json", "k=[3]")) == 2
    assert one_line_error(capsys.readouterr().err, "is a file")
    assert blocked.read_text() == "mine"


def test_k_above_the_bank_is_recorded_with_the_k_it_used(tmp_path, folder, backbone):
    output = tmp_path / "knn.json"
    assert knn.main(eval_args(backbone, folder, output, "k=[3,5000]")) == 0
    results = json.loads(output.read_text())["results"]
    bank = 2 * 6
    assert results["knn_k5000_used"] == bank and "knn_k3_used" not in results
    # the whole bank's vote: the same figure as k equal to the bank
    same = tmp_path / "knn_bank.json"
    assert knn.main(eval_args(backbone, folder, same, f"k=[{bank}]")) == 0
    assert results["knn_top1_k5000"] == json.loads(same.read_text())["results"][f"knn_top1_k{bank}"]


# ------------------------------------------------------------------------------------------ a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step SimCLR run (3 steps an epoch, 2 epochs, a checkpoint every 2 steps and every epoch, all kept) on an image folder
    with one corrupt training image and one corrupt test image, loader workers on, k-NN at k = 5 and 5000."""
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 24), ("val", 8)):
        for label in range(2):
            folder = root / "data" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (20, 20, 3)) + 150 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    corrupt = [root / "data" / "train" / "class0" / "3.png", root / "data" / "val" / "class1" / "5.png"]
    for path in corrupt:
        path.write_bytes(b"\x89PNG not an image")
    out = root / "run"
    done = run("stochcon/train.py", [
        f"output_dir={out}", "data.name=image_folder", f"data.root={root / 'data'}", "data.skip_corrupt=true",
        "data.num_workers=2", "augment.on=loader", "epochs=2", "batch_size=16", "save_every_steps=2",
        "keep_last=10", "backbone.name=small_convnet", "backbone.width=4", "method.projector=[16,8]",
        "progress_bar=false", "tracker=none", "eval.linear_epochs=1", "eval.knn_k=[5,5000]"])
    assert done.returncode == 0, done.stderr[-3000:]
    return out, root / "data", corrupt, done.stderr


def test_corrupt_files_are_counted_and_reported_once_over_training_evaluation_and_workers(trained):
    """The training file is read at initialisation, in training and in the final evaluation (three data sets,
    loader workers), the test file only by the evaluations: each is one file skipped, reported once."""
    out, _, corrupt, stderr = trained
    assert json.loads((out / "results.json").read_text())["skipped_corrupt_images"] == 2
    assert [stderr.count(f"skipping corrupt image file {path}") for path in corrupt] == [1, 1]


def test_the_trainers_k_nn_records_the_k_it_used(trained):
    out, *_ = trained
    results = json.loads((out / "results.json").read_text())
    bank = 2 * 24  # the corrupt image is replaced by the next one: the bank keeps 48 rows
    assert results["knn_k5000_used"] == bank and results["knn_k5000_used_at_init"] == bank
    assert "knn_k5_used" not in results and 0 <= results["knn_top1_k5000"] <= 1


def test_an_evaluation_of_an_unfinished_run_says_so_and_records_its_step(trained, tmp_path, capsys):
    out, data, _, _ = trained
    args = ["data.name=image_folder", f"data.root={data}", "data.skip_corrupt=true", "device=cpu", "num_workers=0",
            "progress_bar=false", "k=[5]"]
    assert knn.main([f"checkpoint={out}", *args, f"output={tmp_path / 'finished.json'}"]) == 0
    assert "unfinished" not in capsys.readouterr().err
    record = json.loads((tmp_path / "finished.json").read_text())
    assert (record["checkpoint_step"], record["total_steps"], record["run_finished"]) == (6, 6, True)
    # what a run killed after its step-2 checkpoint leaves: no final backbone, results or later checkpoints
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    (stopped / "backbone.safetensors").unlink()
    (stopped / "results.json").unlink()
    for checkpoint in (stopped / "checkpoints").iterdir():
        if checkpoint.name != "step_00000002":
            shutil.rmtree(checkpoint)
    assert knn.main([f"checkpoint={stopped}", *args, f"output={tmp_path / 'stopped.json'}"]) == 0
    captured = capsys.readouterr()
    assert "unfinished run" in captured.err and "step 2 of 6" in captured.err
    assert "unfinished run, step 2 of 6" in captured.out
    record = json.loads((tmp_path / "stopped.json").read_text())
    assert (record["checkpoint_step"], record["total_steps"], record["run_finished"]) == (2, 6, False)
    # a checkpoint folder named directly
    assert knn.main([f"checkpoint={out / 'checkpoints' / 'step_00000004'}", *args,
                     f"output={tmp_path / 'step4.json'}"]) == 0
    assert "step 4 of 6" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ analyses' outputs


def test_stochcon_analysis_out_naming_a_file_is_one_line_before_the_analysis(trained, tmp_path, capsys):
    out, *_ = trained
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    assert stochcon_analysis.main(["spectrum", str(out), "--out", str(taken), "--max-images", "8"]) == 2
    assert one_line_error(capsys.readouterr().err, "--out")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("command, argv", [
    ("msbreg.analysis.alignment_uniformity", ["RUN"]),
    ("msbreg.analysis.collapse_curve", ["RUN"]),
    ("vcreg.analysis.collapse", ["--runs", "RUN"]),
    ("vcreg.analysis.gradient_share", ["--run", "RUN"]),
    ("vcreg.analysis.two_moons", []),
])
def test_an_analysis_output_naming_a_folder_is_one_line_before_the_analysis(trained, tmp_path, capsys, command,
                                                                            argv):
    out, *_ = trained
    module = importlib.import_module(command)
    folder = tmp_path / "result.json"
    folder.mkdir()
    argv = [str(out) if arg == "RUN" else arg for arg in argv]
    assert module.main([*argv, "--output", str(folder)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --output=") and "is a folder" in lines[0]
    assert not any(folder.iterdir())


def test_two_processes_count_each_corrupt_file_once(trained, tmp_path):
    """Each process skips what it reads (the training file in whichever rank's slice holds it, the test file in the
    main process's evaluation): the run's count is their union."""
    _, data, _, _ = trained
    out = tmp_path / "run"
    done = launch("stochcon/train.py", [
        f"output_dir={out}", "data.name=image_folder", f"data.root={data}", "data.skip_corrupt=true",
        "data.num_workers=1", "augment.on=loader", "epochs=2", "batch_size=16", "backbone.name=small_convnet",
        "backbone.width=4", "method.projector=[16,8]", "progress_bar=false", "tracker=none", "eval.linear=false",
        "eval.knn_at_init=false", "eval.knn_k=[5]"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["skipped_corrupt_images"] == 2
