"""A study's archive (``common.study.archive``): the finished jobs' small files, saved with the repository and
restored on another machine, so that the tables regenerate there and the study goes on without rerunning them;
a restored job that a job still to run needs runs again (the archive holds no checkpoint), and nothing local is
ever overwritten."""

import json
from pathlib import Path

from common.study import cli
from common.study.archive import archived_files, restore, save
from common.study.jobs import RECORD, RESTORED, ROOT, Job, identity, run_jobs
from tests.trainer_runs import write_idx_fashion_mnist


def quiet(jobs):
    return run_jobs(jobs, parallel=1, threads=1, say=lambda _: None)


def command_job(runs: Path, name: str, *needs: str) -> Job:
    """``tests.study_command``: a job that leaves a weights file and, given ``needs``, reads the first one's."""
    argv = [str(runs / name), "after", str(runs / needs[0])] if needs else [str(runs / name), "quick"]
    return Job(name=name, module="tests.study_command", argv=argv, folder=runs / name, done=runs / name / "done.txt",
               study="s", needs=tuple(needs))


def test_a_study_saved_then_restored_elsewhere_reruns_nothing_and_reports_the_same(tmp_path):
    """Run one MSBReg cell and its alignment measurements (whose arguments name the run's folder), save them,
    restore them under another runs folder: every job is done there, and the tables read the same."""
    data = write_idx_fashion_mnist(tmp_path / "data", n_train=256, n_test=64)
    archive = tmp_path / "archive"

    def study(runs: str, *extra: str) -> int:
        return cli.main(["--budget", "tiny", "--seeds", "0", "--runs", str(tmp_path / runs), "--data-root", str(data),
                         "--archive", str(archive), "--docs", str(tmp_path / runs / "docs"),
                         "--only", "msbreg/k2_ls0_lb0_s0*", *extra], papers=("msbreg",))

    assert study("first", "--no-archive") == 0
    first = tmp_path / "first" / "tiny" / "msbreg"
    assert (first / "k2_ls0_lb0_s0" / "checkpoints").is_dir() and not archive.exists()
    assert study("first", "--report-only") == 0  # runs made without the archive are saved by a report
    kept = {path.relative_to(archive) for path in archive.rglob("*") if path.is_file()}
    assert Path("msbreg/k2_ls0_lb0_s0/results.json") in kept
    assert Path("msbreg/k2_ls0_lb0_s0_alignment_projection/alignment_uniformity.json") in kept
    assert Path("msbreg/k2_ls0_lb0_s0.job") / RECORD in kept
    assert not any("checkpoints" in path.parts or path.suffix in (".pt", ".safetensors") for path in kept)

    assert study("second", "--report-only") == 0  # a fresh machine: the tables come from the archive alone
    table = "msbreg_table3.md"
    assert (tmp_path / "second" / "docs" / table).read_text() == (tmp_path / "first" / "docs" / table).read_text()
    # a study of other jobs restores the archived ones too, so its tables show them beside its own
    assert cli.main(["--budget", "tiny", "--seeds", "0", "--runs", str(tmp_path / "third"), "--data-root", str(data),
                     "--archive", str(archive), "--docs", str(tmp_path / "third" / "docs"), "--report-only",
                     "--only", "msbreg/k4_*"], papers=("msbreg",)) == 0
    assert (tmp_path / "third" / "docs" / table).read_text() == (tmp_path / "first" / "docs" / table).read_text()
    assert (tmp_path / "third" / "tiny" / "msbreg" / "k2_ls0_lb0_s0" / "results.json").is_file()
    second = tmp_path / "second" / "tiny" / "msbreg"
    jobs = cli.selected(cli.study("msbreg").jobs(cli.context(cli.parser("p", ("msbreg",)).parse_args(
        ["--budget", "tiny", "--seeds", "0", "--runs", str(tmp_path / "second"), "--data-root", str(data)]))),
        ["msbreg/k2_ls0_lb0_s0*"])
    assert len(jobs) == 3 and all(job.restored for job in jobs)
    assert any(not job.configured for job in jobs)  # a command given the run's folder by path: still the same job
    outcome = quiet(jobs)
    assert sorted(outcome.skipped) == sorted(job.name for job in jobs) and not outcome.finished
    assert not list(second.glob("*.replaced-*"))


def test_a_restored_job_that_a_job_to_run_needs_runs_again_and_the_jobs_that_read_it_stay_done(tmp_path):
    first, second, archive = tmp_path / "first", tmp_path / "second", tmp_path / "archive"
    assert quiet([command_job(first, "pretrain"), command_job(first, "probe", "pretrain")]).finished == [
        "pretrain", "probe"]
    assert sorted(save([command_job(first, name) for name in ("pretrain", "probe")], archive)) == [
        "pretrain", "probe"]
    assert not (archive / "pretrain" / "weights.bin").exists()  # only the text files travel

    jobs = [command_job(second, "pretrain"), command_job(second, "probe", "pretrain")]
    assert restore(jobs, archive) == ["pretrain", "probe"]
    assert quiet(jobs).skipped == ["pretrain", "probe"]  # nothing new needs the weights: nothing runs
    recorded = json.loads((jobs[0].state / RECORD).read_text())
    assert recorded["machine"]["cpu"] and recorded["machine"]["torch"]  # where it was made: a seed's run is the
    # same run only on the same CPU model and torch build

    jobs.append(command_job(second, "transfer", "pretrain"))  # a job added since: it needs pretrain's weights
    outcome = quiet(jobs)
    assert outcome.finished == ["pretrain", "transfer"] and outcome.skipped == ["probe"] and not outcome.failed
    assert (second / "transfer" / "done.txt").is_file() and not jobs[0].restored
    assert (second / "pretrain" / "starts.txt").read_text() == "quick\n"  # a fresh run, in an empty folder
    (aside,) = second.glob("pretrain.replaced-*")  # the restored copy is moved aside, not deleted
    assert (aside / "done.txt").is_file()
    # the same job computed again: its record keeps its time, so the probe that read it is still done
    assert json.loads((jobs[0].state / RECORD).read_text())["finished_at"] == recorded["finished_at"]
    assert quiet(jobs).skipped == ["pretrain", "probe", "transfer"]


def test_restoring_never_writes_over_a_local_folder_and_saving_skips_unfinished_jobs(tmp_path):
    first, second, archive = tmp_path / "first", tmp_path / "second", tmp_path / "archive"
    quiet([command_job(first, "a"), command_job(first, "b")])
    (first / "b" / "done.txt").unlink()  # b did not finish after all
    assert save([command_job(first, name) for name in "abc"], archive) == ["a"]
    local = second / "a"
    local.mkdir(parents=True)
    (local / "mine.txt").write_text("keep me")
    assert restore([command_job(second, "a")], archive) == []
    assert [path.name for path in local.iterdir()] == ["mine.txt"]
    assert not (second / "a.job").exists()


def test_a_restored_jobs_marker_is_not_archived_and_a_resave_replaces_the_copy(tmp_path):
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    job = command_job(runs, "a")
    quiet([job])
    save([job], archive)
    (runs / "a" / "notes.txt").write_text("a file written since")
    assert save([job], archive) == ["a"]
    assert (archive / "a" / "notes.txt").is_file()
    (job.state / RESTORED).write_text("{}")
    assert save([job], archive) == []  # restored: the archive already holds it
    assert RESTORED not in {path.name for path in archived_files(job.state)}


def test_a_command_given_paths_has_the_same_identity_under_any_runs_folder(tmp_path):
    one, two = command_job(tmp_path / "one", "probe", "pretrain"), command_job(tmp_path / "two", "probe", "pretrain")
    assert identity(one) == identity(two) == {"module": "tests.study_command",
                                              "argv": ["<runs>/probe", "after", "<runs>/pretrain"]}


def test_the_full_budget_keeps_its_archive_in_the_repository(tmp_path):
    def archive(*argv: str):
        return cli.default_archive(cli.parser("p", cli.PAPERS).parse_args(["--runs", str(tmp_path), *argv]))

    assert archive("--budget", "full") == ROOT / "docs" / "reproduction" / "records"
    assert archive("--budget", "tiny") is None
    assert archive("--budget", "full", "--no-archive") is None
    assert archive("--budget", "tiny", "--archive", str(tmp_path / "kept")) == tmp_path / "kept"
