"""Run folders never lose a user's files or hours: a folder that is not a run of ours is never written into or
emptied, two runs never share a folder, leftovers of interrupted saves never block a resume, and every input the
run will read (the evaluation's splits, every shard) is checked before the first step."""

import json
import os
import signal
import subprocess
import sys

import pytest
from eval_data import write_image_folder
from PIL import Image
from trainer_runs import ROOT, env, run, run_until_checkpoint, write_idx_fashion_mnist

from common.checkpoint import is_run_folder, latest_checkpoint
from common.data import DataConfig, open_splits
from common.data.make_shards import make_shards
from common.errors import EXIT_BAD_INPUT, DataError, RunFolderError
from common.run_lock import LOCK_FILE, RunLock

SCRIPT = "stochcon/train.py"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_idx_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=64)


def tiny(root, out, *extra):
    """SimCLR on 128 synthetic Fashion-MNIST images, a width-4 CNN, 2 steps of batch 32, a checkpoint each step."""
    return [f"output_dir={out}", f"data.root={root}", "data.num_workers=0", "max_steps=2", "batch_size=32",
            "save_every_steps=1", "backbone.width=4", "method.projector=[16,8]", "progress_bar=false",
            "tracker=none", "eval.knn_at_init=false", "eval.linear=false", "eval.knn_k=[5]", "log_every_steps=1",
            *extra]


def refused(done: subprocess.CompletedProcess, needle: str) -> bool:
    """Exit 2 with one line that contains ``needle``."""
    message = done.stderr.strip()
    return (done.returncode == EXIT_BAD_INPUT and message.count("\n") == 0 and message.startswith("error: ")
            and needle in message)


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------ folders that are not a run of ours
def test_a_folder_holding_no_run_of_ours_is_refused_overwrite_included(data_root, tmp_path):
    folder = tmp_path / "d"
    (folder / "train" / "c").mkdir(parents=True)
    (folder / "train" / "c" / "1.jpg").write_bytes(b"someone's image")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "notes.txt").write_text("someone's notes")
    before = tree(folder)
    for extra in ([], ["overwrite=true"], ["resume=auto"]):
        done = run(SCRIPT, tiny(data_root, folder, *extra))
        assert refused(done, "holds no run of ours"), done.stderr[-1500:]
        assert tree(folder) == before


def test_overwrite_removes_only_what_a_run_writes(data_root, tmp_path):
    out = tmp_path / "run"
    first = run(SCRIPT, tiny(data_root, out, "tracker=tensorboard"))
    assert first.returncode == 0, first.stderr[-1500:]
    assert (out / LOCK_FILE).is_file() and list((out / "train").glob("events.out.tfevents.*"))
    (out / "notes.txt").write_text("mine")
    (out / "train" / "plots").mkdir()
    (out / "train" / "plots" / "loss.png").write_bytes(b"mine")
    (out / "checkpoints" / "best").mkdir()
    (out / "checkpoints" / "best" / "weights.pt").write_bytes(b"mine")
    (out / "eval_knn_cifar10.json").write_text("{}")  # an evaluation command's result: a run's file
    replaced = run(SCRIPT, tiny(data_root, out, "overwrite=true", "max_steps=1"))
    assert replaced.returncode == 0, replaced.stderr[-1500:]
    assert json.loads((out / "results.json").read_text())["steps"] == 1
    assert (out / "notes.txt").read_text() == "mine" and (out / "train" / "plots" / "loss.png").is_file()
    assert not list((out / "train").rglob("events.out.tfevents.*")) and not (out / "eval_knn_cifar10.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_00000001"]


def test_run_folders_from_before_the_lock_file_still_count_as_ours(tmp_path):
    checkpointed = tmp_path / "checkpointed"  # config.yaml and a checkpoint: ours, whatever else it holds
    (checkpointed / "checkpoints" / "step_00000004").mkdir(parents=True)
    (checkpointed / "checkpoints" / "step_00000004" / "state.pt").write_bytes(b"")
    for name in ("config.yaml", "alignment_uniformity.json"):
        (checkpointed / name).write_text("")
    stopped = tmp_path / "stopped"  # config.yaml and nothing but a run's files: ours
    (stopped / "train").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "eval_knn_cifar10.json"):
        (stopped / name).write_text("")
    foreign = tmp_path / "foreign"  # a config.yaml beside files no run writes: not ours
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / "config.yaml").write_text("")
    bare = tmp_path / "bare"  # a run's names without config.yaml: not ours
    (bare / "checkpoints").mkdir(parents=True)
    assert is_run_folder(checkpointed) and is_run_folder(stopped)
    assert not is_run_folder(foreign) and not is_run_folder(bare)


def test_an_empty_output_dir_is_refused(data_root):
    before = sorted(os.listdir(ROOT))
    done = run(SCRIPT, tiny(data_root, ""))
    assert refused(done, "output_dir is empty"), done.stderr[-1500:]
    assert sorted(os.listdir(ROOT)) == before


@pytest.mark.parametrize("where, needle", [("file", "is a file"), ("file/run", "lies under"),
                                           ("/sys/ssl-repro-run", "cannot be written")])
def test_an_output_dir_that_cannot_hold_a_run_is_refused_before_anything_is_built(tmp_path, where, needle):
    (tmp_path / "file").write_text("a file")
    # a data root that does not exist: the output folder is refused first, before the data is opened
    done = run(SCRIPT, tiny(tmp_path / "no_data", tmp_path / where, "data.name=cifar10", "data.download=false"))
    assert refused(done, needle), done.stderr[-1500:]
    assert (tmp_path / "file").read_text() == "a file"


# ---------------------------------------------------------------------------------- one run in a folder
def test_a_second_run_into_a_folder_in_use_is_refused_and_a_killed_run_leaves_no_lock(data_root, tmp_path):
    out = tmp_path / "run"
    args = tiny(data_root, out, "max_steps=4", "resume=auto")
    first = run_until_checkpoint(SCRIPT, args, out, step=1, sig=signal.SIGSTOP, wait=False)  # stopped, holding the folder
    try:
        # the holder may have been stopped anywhere after checkpoint 1, mid-save of step 2 included: what it left
        # is frozen, and the refused run must leave all of it as it was
        before = tree(out)
        second = run(SCRIPT, args)
        assert refused(second, f"is in use by another run (process {first.pid})"), second.stderr[-1500:]
        assert tree(out) == before
    finally:
        first.kill()  # kill -9 of the holder: the operating system releases the lock
        first.wait(timeout=60)
    requeued = run(SCRIPT, args)
    assert requeued.returncode == 0, requeued.stderr[-1500:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]


def test_the_lock_is_held_until_released_and_names_its_holder(tmp_path):
    code = (f"import time; from common.run_lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            "print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"in use by another run \\(process {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    lock = RunLock(tmp_path).acquire()  # killed: nothing stale
    lock.release()
    RunLock(tmp_path).acquire().release()


# ------------------------------------------------------------------------ interrupted saves, precision
@pytest.mark.parametrize("resume", ["true", "auto"])
def test_leftover_temporaries_of_interrupted_saves_never_block_a_resume(data_root, tmp_path, resume):
    out = tmp_path / "run"
    args = tiny(data_root, out, "max_steps=4")
    run_until_checkpoint(SCRIPT, args, out, step=2, sig=signal.SIGKILL)
    checkpoints = out / "checkpoints"
    # the kill lands at step 2 or a little later: the run resumes from its latest complete checkpoint, whichever
    complete = latest_checkpoint(out) / "state.pt"
    (checkpoints / ".tmp_step_00000005_123").mkdir()  # a save killed before it wrote anything
    half = checkpoints / ".tmp_step_00000003_456"  # a save that a full disk stopped midway
    half.mkdir()
    (half / "state.pt").write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    done = run(SCRIPT, [*args, f"resume={resume}"])
    assert done.returncode == 0, done.stderr[-1500:]
    assert f"resumed from {complete.parent}" in done.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    assert not list(checkpoints.glob(".tmp_step_*"))


def test_fp16_on_a_cpu_is_refused_instead_of_silently_running_float32(data_root, tmp_path):
    done = run(SCRIPT, tiny(data_root, tmp_path / "run", "mixed_precision=fp16"))
    assert refused(done, "mixed_precision=fp16 needs a GPU"), done.stderr[-1500:]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------- every input checked before step 1
def write_shards(tmp_path):
    write_image_folder(tmp_path / "src", {"train": 4, "val": 2})
    make_shards(DataConfig(name="image_folder", root=str(tmp_path / "src")), tmp_path / "shards", shard_size=4)
    return tmp_path / "shards"


def break_data(tmp_path, case: str):
    """Data the final evaluation cannot read: ``(overrides, needle of the error, fix)``; after ``fix()`` the
    overrides it returns name data that a run can read whole."""
    if case == "folder without val/":
        write_image_folder(tmp_path / "folder", {"train": 4})
        data = ["data.name=image_folder", f"data.root={tmp_path / 'folder'}"]
        return data, f"{tmp_path / 'folder' / 'val'} not found", lambda: (
            write_image_folder(tmp_path / "folder", {"val": 2}), data)[1]
    if case == "hf without its test split":
        import datasets

        features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])})
        images = [Image.new("RGB", (12, 12), (100 * (i % 2), 0, 0)) for i in range(8)]
        table = datasets.Dataset.from_dict({"img": images, "y": [i % 2 for i in range(8)]}, features=features)
        datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "hf"))
        data = ["data.name=hf", f"data.root={tmp_path / 'hf'}", "data.image_column=img", "data.label_column=y"]
        return [*data, "data.test_split=test"], "no split 'test'", lambda: [*data, "data.test_split=train"]
    root = write_shards(tmp_path)
    written = (root / "shards.json").read_text()
    index = json.loads(written)
    index["splits"]["test"]["labels"].pop()
    (root / "shards.json").write_text(json.dumps(index))
    data = ["data.name=webdataset", f"data.root={root}"]
    return data, "labels for", lambda: ((root / "shards.json").write_text(written), data)[1]


@pytest.mark.parametrize("case", ["folder without val/", "hf without its test split", "shards.json labels"])
def test_the_evaluation_splits_are_checked_before_the_first_step(data_root, tmp_path, case):
    """eval.knn_at_init=false: nothing reads the test split before the final evaluation, yet a missing one is
    found before step 1, and the folder of the failed start takes the corrected command."""
    data, needle, fix = break_data(tmp_path, case)
    out = tmp_path / "run"
    settings = ["augment.image_size=8", "batch_size=4", "eval.knn_k=[2]"]
    failed = run(SCRIPT, [*tiny(data_root, out), *data, *settings])
    assert refused(failed, needle), failed.stderr[-1500:]
    assert not out.exists() or not (out / "checkpoints").exists()
    fixed = run(SCRIPT, [*tiny(data_root, out), *fix(), *settings])
    assert fixed.returncode == 0, fixed.stderr[-1500:]
    assert json.loads((out / "results.json").read_text())["steps"] == 2


def test_every_shard_is_checked_when_a_split_is_opened(tmp_path):
    root = write_shards(tmp_path)
    cfg = DataConfig(name="webdataset", root=str(root))
    open_splits(cfg, ["train", "test"])
    test_shard = root / "test-000000.tar"
    whole = test_shard.read_bytes()
    test_shard.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(DataError, match="test-000000.tar holds .* bytes"):
        open_splits(cfg, ["test"])
    index = json.loads((root / "shards.json").read_text())
    for entry in index["splits"].values():
        del entry["bytes"]  # an index written before shard sizes were recorded: the tar headers are read
    (root / "shards.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"test-000000.tar (cannot be read, or is cut short|holds \d samples)"):
        open_splits(cfg, ["test"])
    test_shard.write_bytes(whole)
    open_splits(cfg, ["test"])
    (root / "train-000001.tar").unlink()
    with pytest.raises(DataError, match="train-000001.tar not found"):
        open_splits(cfg, ["train"])
