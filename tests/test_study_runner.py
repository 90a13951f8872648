"""The study runner (``common.study``) keeps what a user has: a job's identity is the config it resolves (a recipe
moved into a YAML file reruns nothing, nor does a key added to the code at the value runs had before it, nor a key
renamed since), each budget has its own run folders, a folder holding something else is
moved aside (never deleted), tiny reports stay out of the committed docs, SIGTERM stops the study (exit 75) and
the same command resumes it, and every job's config resolves from any folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.study import cli
from common.study.context import Context
from common.study.jobs import (
    RECORD,
    ROOT,
    STARTED,
    Job,
    identity,
    is_finished,
    recorded_as,
    run_jobs,
    same_identity,
)
from stochcon.study.jobs import jobs as stochcon_jobs
from tests.trainer_runs import write_idx_fashion_mnist
from vcreg.study.jobs import jobs as vcreg_jobs

# vcreg.study's Table 4 recipe as it was before it moved into vcreg/configs/study/fashion_mnist_simclr_vcreg.yaml:
# 21 key=value arguments on top of vcreg/train.py's quickstart config
SIMCLR_ARGV_RECIPE = [
    "method.name=simclr", "augment.name=multiview", "augment.num_views=2", "augment.on=device",
    "augment.crop_scale=[0.2,1.0]", "augment.brightness=0.4", "augment.contrast=0.4", "augment.saturation=0.0",
    "augment.hue=0.0", "augment.grayscale_prob=0.0", "augment.blur_prob=[0.0]", "optim.name=lars", "optim.lr=2.0",
    "optim.lr_scaling=linear", "optim.weight_decay=1e-5", "optim.warmup_epochs=0.5", "batch_size=128",
    "eval.knn_k=[20,200]", "eval.linear_epochs=10", "method.temperature=0.1", "method.projector=[256,64]"]
WAIT_LIMIT_S = 300  # only a guard against a hang: the tests wait for files, not for time


def quiet(jobs, parallel=1):
    return run_jobs(jobs, parallel=parallel, threads=1, say=lambda _: None)


def test_a_recipe_moved_from_arguments_into_a_yaml_file_is_already_done(tmp_path):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=64)
    ctx = Context("tiny", [0], tmp_path / "runs" / "tiny", tmp_path / "docs", str(data))
    new = next(job for job in vcreg_jobs(ctx) if job.name == "vcreg/table4_simclr_baseline_s0")
    assert "--config" in new.argv and not set(SIMCLR_ARGV_RECIPE) & set(new.argv)
    old = Job(name=new.name, module=new.module, folder=new.folder, done=new.done, study=new.study, configured=True,
              argv=[*ctx.data_args(), *SIMCLR_ARGV_RECIPE, *ctx.tiny_trainer_args(), "vcreg.enabled=false",
                    "eval.knn_at_init=true", *ctx.trainer_args(new.folder, 0)])
    assert quiet([old]).finished == [new.name]
    stamp = new.done.stat().st_mtime_ns
    assert quiet([new]).skipped == [new.name]  # the same resolved config: nothing runs again
    assert new.done.stat().st_mtime_ns == stamp
    changed = Job(**{**new.__dict__, "argv": [*new.argv, "optim.lr=1.0"]})
    assert identity(changed) != identity(new)
    moved = Job(**{**new.__dict__, "argv": [*new.argv, "output_dir=elsewhere", "progress_bar=true"]})
    assert identity(moved) == identity(new)  # keys that cannot change a result are not the job's identity

    # a record written before keys were added to the code (at the values runs had before them) is still done
    record_path = new.state / RECORD
    record = json.loads(record_path.read_text())
    assert record["identity"]["keys_added"]["vcreg.mean_removal"] is False
    assert record["identity"]["config"]["vcreg"]["mean_removal"] is False
    older = {"module": new.module, "config": json.loads(json.dumps(record["identity"]["config"]))}
    for section, key in (("vcreg", "mean_removal"), ("optim", "bias_and_norm_lr_scale")):
        del older["config"][section][key]
    del older["config"]["grad_cache"]
    record_path.write_text(json.dumps({**record, "identity": older}))
    assert quiet([new]).skipped == [new.name] and new.done.stat().st_mtime_ns == stamp
    # the key at another value computes something else
    centred = Job(**{**new.__dict__, "argv": [*new.argv, "vcreg.mean_removal=true"]})
    assert not same_identity(older, identity(centred))


def test_a_record_written_before_keys_were_renamed_is_still_done(tmp_path):
    """StochCon's SimCLR head was proj_hidden_dim x proj_hidden_layers, proj_output_dim and proj_norm before it
    became ``projector`` and ``projector_norm``: a study finished under the old names reruns none of it."""
    ctx = Context("full", [0], tmp_path / "runs", tmp_path / "docs")
    job = next(job for job in stochcon_jobs(ctx) if job.name == "stochcon/simclr_s0")
    current = identity(job)
    saved = json.loads(json.dumps(current))
    method = saved["config"]["method"]
    *hidden, output = method.pop("projector")
    assert hidden and len(set(hidden)) == 1
    method |= {"proj_hidden_dim": hidden[0], "proj_hidden_layers": len(hidden), "proj_output_dim": output,
               "proj_norm": method.pop("projector_norm")}
    assert not same_identity(saved, current)  # as written, the old names differ ...
    assert recorded_as(job, saved, current)  # ... and read under the new ones, it is the same job
    job.state.mkdir(parents=True)
    (job.state / RECORD).write_text(json.dumps({"identity": saved, "inputs": {}}))
    job.done.parent.mkdir(parents=True)
    job.done.write_text("{}")
    assert not job.needs and is_finished(job, current, {})
    method["proj_output_dim"] = output + 1  # renamed, but another head: another job
    assert not recorded_as(job, saved, current)


def test_each_budget_has_its_own_run_folders(tmp_path):
    def folders(budget):
        ctx = cli.context(cli.parser("p", cli.PAPERS).parse_args(["--budget", budget, "--runs", str(tmp_path)]))
        assert ctx.runs == tmp_path / budget
        return {job.folder for paper in cli.PAPERS for job in cli.study(paper).jobs(ctx)}

    tiny, full = folders("tiny"), folders("full")
    assert all(tmp_path / "tiny" in folder.parents for folder in tiny)
    assert all(tmp_path / "full" in folder.parents for folder in full)
    assert not tiny & full


def split_job(folder: Path, data: Path, per_class: str) -> Job:
    """A real, cheap command: a few Fashion-MNIST images per class written as PNG."""
    return Job(name=folder.name, module="vcreg.study.fashion_mnist_split",
               argv=["--out", str(folder), "--per-class", *per_class, "--data-root", str(data)],
               folder=folder, done=folder / "split.json", study="s")


def test_a_folder_holding_another_run_or_other_files_is_moved_aside_never_deleted(tmp_path):
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=100, n_test=50)
    first = split_job(tmp_path / "a", data, "1111")
    assert quiet([first]).finished == ["a"]
    changed = split_job(tmp_path / "a", data, "1112")
    assert quiet([changed]).finished == ["a"]  # another command: runs again...
    (aside,) = tmp_path.glob("a.replaced-*")  # ...after moving the finished run aside, whole
    assert json.loads((aside / "split.json").read_text())["per_class"] == [1, 1, 1, 1]
    assert json.loads((tmp_path / "a" / "split.json").read_text())["per_class"] == [1, 1, 1, 2]
    stranger = tmp_path / "b"  # a folder the study did not write
    stranger.mkdir()
    (stranger / "mine.txt").write_text("keep me")
    assert quiet([split_job(stranger, data, "1111")]).finished == ["b"]
    (aside,) = tmp_path.glob("b.replaced-*")
    assert (aside / "mine.txt").read_text() == "keep me" and not (stranger / "mine.txt").exists()


def test_a_tiny_budget_writes_its_reports_under_its_runs_not_into_the_docs(tmp_path, monkeypatch):
    committed = {path: path.stat().st_mtime_ns for path in (ROOT / "docs").rglob("*") if path.is_file()}
    monkeypatch.chdir(tmp_path)  # before: --docs defaulted to docs/reproduction of the current folder
    assert cli.main(["--budget", "tiny", "--report-only", "--seeds", "0", "--paper", "msbreg",
                     "--runs", "runs"]) == 0
    assert (tmp_path / "runs" / "tiny" / "reports" / "msbreg_table5.md").is_file()
    assert (tmp_path / "runs" / "tiny" / "reports" / "cpu_time.md").is_file()
    assert not (tmp_path / "docs").exists()
    assert {path: path.stat().st_mtime_ns for path in (ROOT / "docs").rglob("*") if path.is_file()} == committed
    args = cli.parser("p", cli.PAPERS).parse_args(["--budget", "full", "--runs", "runs"])
    assert cli.context(args).docs == ROOT / "docs" / "reproduction"  # only the full study replaces the tables


def test_every_job_resolves_its_config_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # before: "config file not found" outside the repository root
    ctx = Context("full", [0], tmp_path / "runs" / "full", tmp_path / "docs")
    jobs = [job for paper in cli.PAPERS for job in cli.study(paper).jobs(ctx)]
    configured = [job for job in jobs if job.configured]
    assert len(configured) > 50
    for job in configured:
        assert identity(job)["config"]["seed"] == 0, job.name


def test_each_paper_study_and_the_console_script_run_from_any_folder(tmp_path):
    assert 'ssl-reproduce = "common.study.cli:main"' in (ROOT / "pyproject.toml").read_text().splitlines()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for paper in cli.PAPERS:  # python -m <paper>.study, from a folder outside the repository
        done = subprocess.run([sys.executable, "-m", f"{paper}.study", "--budget", "tiny", "--seeds", "0",
                               "--report-only", "--runs", "runs"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=WAIT_LIMIT_S, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        tables = sorted((tmp_path / "runs" / "tiny" / "reports").glob(f"{paper}_*.md"))
        assert tables and tables[0].read_text().startswith(f"<!-- generated by `python -m {paper}.study --budget tiny")


DRIVER = """
import sys
from pathlib import Path
from common.study.jobs import Job, run_jobs

root, parallel = Path(sys.argv[1]), int(sys.argv[2])
jobs = [Job(name=name, module="tests.study_command", argv=[str(root / name), mode], folder=root / name,
            done=root / name / "done.txt", study="s") for name, mode in zip(sys.argv[3::2], sys.argv[4::2])]
outcome = run_jobs(jobs, parallel=parallel, threads=1)
print("OUTCOME", {key: sorted(value) for key, value in outcome.__dict__.items()})
sys.exit(75 if outcome.stopped or outcome.not_started else 1 if outcome.failed else 0)
"""


def run_driver(tmp_path: Path, parallel: int, jobs: list[tuple[str, str]], stop_when: list[str] | None):
    """Run the study ``jobs`` (name, mode) in a process of their own; once every job of ``stop_when`` waits,
    send it SIGTERM. Its exit code and output."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), str(tmp_path / "runs"), str(parallel),
               *(part for job in jobs for part in job)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    if stop_when:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not all((tmp_path / "runs" / name / "waiting").is_file() for name in stop_when):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=WAIT_LIMIT_S)
    return process.returncode, out


def check_stopped_then_resumed(tmp_path: Path, parallel: int, waiting: list[str]) -> None:
    """``waiting`` jobs fill the ``parallel`` slots, job c comes after them."""
    jobs = [*((name, "wait") for name in waiting), ("c", "quick")]
    code, out = run_driver(tmp_path, parallel, jobs, stop_when=waiting)
    assert code == 75, out
    assert "FAILED" not in out and all(f"stopped {name}" in out for name in waiting), out
    assert not (tmp_path / "runs" / "c").exists()  # the next job did not start
    code, out = run_driver(tmp_path, parallel, jobs, stop_when=None)  # the same command again
    assert code == 0, out
    for name in waiting:  # resumed in its own folder, kept as it was
        assert (tmp_path / "runs" / name / "starts.txt").read_text() == "wait\nwait\n"
        assert (tmp_path / "runs" / f"{name}.job" / STARTED).is_file()
    assert (tmp_path / "runs" / "c" / "done.txt").is_file()
    assert not list((tmp_path / "runs").glob("*.replaced-*"))


def test_sigterm_stops_the_study_and_the_same_command_resumes_it(tmp_path):
    check_stopped_then_resumed(tmp_path, parallel=1, waiting=["a"])  # jobs in the study's own process


def test_sigterm_stops_every_running_job_process_and_the_same_command_resumes_them(tmp_path):
    check_stopped_then_resumed(tmp_path, parallel=2, waiting=["a", "b"])  # each job its own process


def test_only_selects_the_matching_jobs_and_the_jobs_they_need(tmp_path):
    """``--only 'vcreg/table2_resnet32_*'``: those runs, their transfer probes, and the class split they train on."""
    ctx = Context("tiny", [0], tmp_path / "runs" / "tiny", tmp_path / "docs")
    every = vcreg_jobs(ctx)
    chosen = cli.selected(every, ["vcreg/table2_resnet32_baseline_s0*"])
    assert [job.name for job in chosen] == ["vcreg/fashion_mnist_split", "vcreg/table2_resnet32_baseline_s0",
                                           "vcreg/table2_resnet32_baseline_s0_transfer"]
    assert cli.main(["--budget", "tiny", "--runs", str(tmp_path / "runs"), "--only", "vcreg/no_such_job"],
                    papers=("vcreg",)) == 2
