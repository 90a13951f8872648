"""k-NN classifier: exact agreement with a per-sample brute-force vote, chunking, accuracy helpers, the two
protocols (Wu et al. 2018, DINO) and the progress bar."""

import math

import pytest
import torch

from common.errors import ConfigError
from evaluation.knn import (
    KNN_PROTOCOLS,
    knn_accuracy,
    knn_class_scores,
    knn_predict,
    knn_settings,
    top_k_accuracy,
)


def brute_force_knn(train_x, train_y, test_x, k, temperature, num_classes):
    """One query at a time, in plain Python: sort all cosine similarities, vote exp(s/T) per class."""
    predictions, all_scores = [], []
    train_rows = [row / row.norm() for row in train_x]
    for query in test_x:
        query = query / query.norm()
        sims = [(float(query @ row), j) for j, row in enumerate(train_rows)]
        sims.sort(key=lambda pair: -pair[0])
        scores = [0.0] * num_classes
        for sim, j in sims[:k]:
            scores[int(train_y[j])] += math.exp(sim / temperature)
        all_scores.append(scores)
        predictions.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return torch.tensor(predictions), torch.tensor(all_scores, dtype=torch.float64)


@pytest.mark.parametrize("k,temperature", [(1, 0.1), (5, 0.07), (20, 0.5), (200, 0.1)])
@pytest.mark.parametrize("chunk_size,max_chunk_elements", [(None, 1 << 26), (7, 1 << 26), (3, 50)])
def test_knn_matches_brute_force(k, temperature, chunk_size, max_chunk_elements):
    generator = torch.Generator().manual_seed(k)
    num_classes = 6
    train_x = torch.randn(150, 16, generator=generator, dtype=torch.float64)
    train_y = torch.randint(0, num_classes, (150,), generator=generator)
    test_x = torch.randn(31, 16, generator=generator, dtype=torch.float64)
    expected, expected_scores = brute_force_knn(train_x, train_y, test_x, min(k, 150), temperature, num_classes)
    # max_chunk_elements=50 with chunk_size 3 forces the bank to be scanned in slices of 16 rows.
    scores = knn_class_scores(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes,
                              chunk_size=chunk_size, max_chunk_elements=max_chunk_elements)
    # float64 throughout: a cosine differs from the brute force's by a few ulps (1e-15), exp(s/T) then by
    # 1e-15 / T < 2e-14 relatively, a sum of up to 200 such terms by as much: far below rtol=1e-9.
    assert torch.allclose(scores, expected_scores, rtol=1e-9, atol=0)
    # The argmax is then the same wherever the two best classes are more than that apart (no near-tie here).
    best_two = expected_scores.topk(2, dim=1).values
    assert ((best_two[:, 0] - best_two[:, 1]) > 1e-6 * best_two[:, 0]).all()
    predicted = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes,
                            chunk_size=chunk_size, max_chunk_elements=max_chunk_elements)
    assert torch.equal(predicted, expected)


def test_knn_is_scale_invariant_and_recovers_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=generator) * 3
    train_y = torch.arange(400) % 4
    test_y = torch.arange(100) % 4
    train_x = centres[train_y] + torch.randn(400, 32, generator=generator)
    test_x = centres[test_y] + torch.randn(100, 32, generator=generator)
    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.1)
    assert accuracy["top1"] == 1.0 and accuracy["top5"] == 1.0
    # Cosine similarity ignores the scale of each feature vector.
    scaled = knn_predict(train_x * 7.0, train_y, test_x * 0.01, k=20)
    assert torch.equal(scaled, knn_predict(train_x, train_y, test_x, k=20))


def test_knn_protocols_and_their_overrides():
    assert knn_settings() == KNN_PROTOCOLS["wu2018"]
    wu, dino = knn_settings("wu2018"), knn_settings("dino")
    assert (wu.k, wu.k_also, wu.temperature) == (200, 20, 0.1)
    assert (dino.k, dino.k_also, dino.temperature) == (20, 200, 0.07)
    assert knn_settings("dino", temperature=0.2) == type(dino)(k=20, k_also=200, temperature=0.2)
    assert knn_settings("wu2018", k=50, k_also=None).k == 50
    with pytest.raises(ConfigError, match="wu2018, dino"):
        knn_settings("wu")


def test_knn_progress_bar(capsys):
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    knn_class_scores(x, y, x, k=5, chunk_size=10, progress=True)
    assert "k-NN k=5" in capsys.readouterr().err
    knn_class_scores(x, y, x, k=5, chunk_size=10)
    assert capsys.readouterr().err == ""


def test_top_k_accuracy_counts_hits():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    accuracy = top_k_accuracy(scores, labels, (1, 2, 5))
    # a float32 mean of 0/1 hits: k/3 rounded to float32 is within 2^-24 relative (approx allows 1e-6)
    assert accuracy[1] == pytest.approx(1 / 3)
    assert accuracy[2] == pytest.approx(2 / 3)
    assert accuracy[5] == 1.0


def test_knn_rejects_bad_inputs():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="dimensions differ"):
        knn_predict(x, torch.zeros(10, dtype=torch.long), torch.randn(3, 5))
    with pytest.raises(ValueError, match="unlabelled"):
        knn_predict(x, torch.full((10,), -1), torch.randn(3, 4))
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x, torch.zeros(10, dtype=torch.long), torch.randn(3, 4), temperature=0.0)
