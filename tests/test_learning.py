"""Real learning on real images: the quickstart recipe on a Fashion-MNIST subset raises the k-NN accuracy."""

import json
from pathlib import Path

import pytest
from trainer_runs import run

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_simclr_on_fashion_mnist_subset_raises_knn_accuracy(tmp_path):
    """96 SimCLR steps (4096 images, batch 128, the quickstart's CNN, augmentation and LARS) lift the 20-NN
    top-1 on the 10k test images over the same backbone at initialisation by more than a point."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/setup_env.sh installs it)")
    out = tmp_path / "run"
    done = run("stochcon/train.py", [f"output_dir={out}", f"data.root={FMNIST}", "data.subset=4096", "epochs=3",
                                     "batch_size=128", "eval.max_train_images=4096", "eval.linear=false",
                                     "progress_bar=false", "tracker=none", "save_every_epochs=100"])
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 96
    assert results["knn_top1_k20"] > results["knn_top1_k20_at_init"] + 0.01
