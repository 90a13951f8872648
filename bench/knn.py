"""k-NN classification time: ``evaluation.knn.knn_predict`` vs scikit-learn vs the bare similarity product.

Random features (a 50k x 512 bank, 10k queries, 10 classes; the size of CIFAR-10 with a ResNet-18), timed in
interleaved rounds:

- ``ours``: ``evaluation.knn.knn_predict`` (cosine similarity, top-k, temperature-weighted vote), default chunks;
- ``bare``: the physical limit of the same computation, normalise both sides, then per chunk of 1024 queries
  one matrix product and one ``topk`` (no vote);
- ``sklearn``: ``KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine")``, fit + predict.

The target is ``ours / bare`` within 1.2.

    python bench/knn.py                       # 50k x 10k, width 512, k = 200, 3 rounds
    python bench/knn.py --k 20 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from bench.timing import fmt, interleaved, machine, quartiles, ratios, set_threads, write_json
from evaluation.knn import knn_predict

BARE_CHUNK = 1024


def bare_topk(train: torch.Tensor, test: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised similarity product and top-k per chunk of queries: the least any k-NN must compute."""
    bank = F.normalize(train, dim=1)
    indices = torch.empty(test.shape[0], k, dtype=torch.long)
    for start in range(0, test.shape[0], BARE_CHUNK):
        queries = F.normalize(test[start:start + BARE_CHUNK], dim=1)
        indices[start:start + BARE_CHUNK] = torch.topk(queries @ bank.T, k, dim=1).indices
    return indices


def run(args) -> dict:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=generator)
    test = torch.randn(args.test, args.dim, generator=generator)
    labels = torch.randint(0, args.classes, (args.train,), generator=generator)
    fns = {"ours": lambda: knn_predict(train, labels, test, k=args.k, temperature=0.1, num_classes=args.classes),
           "bare": lambda: bare_topk(train, test, args.k)}
    if not args.no_sklearn:
        from sklearn.neighbors import KNeighborsClassifier

        train_np, test_np, labels_np = train.numpy(), test.numpy(), labels.numpy()

        def sklearn_predict():
            model = KNeighborsClassifier(n_neighbors=args.k, algorithm="brute", metric="cosine")
            return model.fit(train_np, labels_np).predict(test_np)

        fns["sklearn"] = sklearn_predict
    seconds = interleaved(fns, args.rounds, args.warmup)
    flops = 2 * args.train * args.test * args.dim
    result = {"train": args.train, "test": args.test, "dim": args.dim, "classes": args.classes, "k": args.k,
              "similarity_flops": flops, "seconds": {n: quartiles(s) for n, s in seconds.items()},
              "ours_over_bare": quartiles(ratios(seconds, "ours", "bare")),
              "bare_gflops_per_second": flops / quartiles(seconds["bare"])["median"] / 1e9}
    if "sklearn" in seconds:
        result["sklearn_over_ours"] = quartiles(ratios(seconds, "sklearn", "ours"))
        result["sklearn_over_bare"] = quartiles(ratios(seconds, "sklearn", "bare"))
    return result


def print_table(r: dict) -> None:
    print(f"k-NN: bank {r['train']} x {r['dim']}, {r['test']} queries, {r['classes']} classes, k = {r['k']}; "
          "median [q25-q75] over rounds")
    print(f"{'variant':<10}{'seconds':<28}{'ratio to bare':<24}")
    for name, q in r["seconds"].items():
        ratio = {"ours": r["ours_over_bare"], "bare": None, "sklearn": r.get("sklearn_over_bare")}[name]
        print(f"{name:<10}{fmt(q):<28}{fmt(ratio) if ratio else '1':<24}")
    print(f"bare similarity product: {r['bare_gflops_per_second']:.1f} GFLOP/s; target ours/bare <= 1.2: "
          f"{'met' if r['ours_over_bare']['median'] <= 1.2 else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (the test)")
    parser.add_argument("--output", default="bench/results/knn.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.dim, args.k, args.rounds, args.warmup = 2000, 500, 64, 20, 2, 0
    args.threads = set_threads(args.threads, args.quick)
    result = run(args)
    print_table(result)
    write_json(args.output, machine() | {"rounds": args.rounds, "warmup": args.warmup, "quick": args.quick}, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
