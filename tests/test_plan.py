"""common.pass_count and common.plan: FLOPs against a hand count, the exact batch polynomial, activation memory
against the CPU's measured peak, and the command on a paper config."""

from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from common.pass_count import FIT_BATCHES, count_pass, quadratic
from common.plan import main, markdown_table, plan_config

SIMCLR = Path(__file__).resolve().parent.parent / "stochcon" / "configs" / "fashion_mnist_simclr.yaml"


class ConvLinear(nn.Module):
    """conv 3x3 (1 -> 4 channels, 8x8, no bias) -> ReLU -> linear (256 -> 10, no bias) -> mean square."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.linear = nn.Linear(4 * 8 * 8, 10, bias=False)

    def forward(self, views, labels):
        return {"loss": self.linear(F.relu(self.conv(views[0])).flatten(1)).pow(2).mean()}


def test_flops_match_a_hand_count():
    # A multiply-add is 2 FLOPs. Forward: conv 2*B*Cout*H*W*Cin*k*k, linear 2*B*in*out. Backward of a layer
    # whose input needs a gradient costs 2x its forward (gradient of the input and of the weight: one product
    # each), so the linear layer costs 3x its forward in all; the first layer's input (the images) needs no
    # gradient, so the conv's backward is its weight gradient only: 2x its forward in all. Element-wise work
    # (ReLU, the square) is not counted.
    batch = 5
    conv = 2 * batch * 4 * 8 * 8 * 1 * 3 * 3
    linear = 2 * batch * 256 * 10
    count = count_pass(ConvLinear(), [torch.randn(batch, 1, 8, 8)], torch.zeros(batch, dtype=torch.long))
    assert count.forward_flops == conv + linear
    assert count.flops == 2 * conv + 3 * linear


class Contrastive(nn.Module):
    """A linear embedding and a B x B similarity loss: counts with a B^2 term, as InfoNCE's."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(12, 6)

    def forward(self, views, labels):
        z = self.embed(views[0])
        return {"loss": torch.logsumexp(z @ z.T, dim=1).mean()}


def test_the_fit_at_small_batches_is_exact_at_a_large_batch():
    def counted(batch):
        return count_pass(Contrastive(), [torch.randn(batch, 12)], torch.zeros(batch, dtype=torch.long))

    passes = {batch: counted(batch) for batch in FIT_BATCHES}
    for name in ("flops", "activation_bytes"):
        fit = quadratic([(batch, getattr(passes[batch], name)) for batch in FIT_BATCHES])
        assert fit(57) == getattr(counted(57), name), name
    # a linear extrapolation of one small batch misses the B x B term
    assert passes[2].flops / 2 * 57 != counted(57).flops


def cpu_peak_bytes(work) -> int:
    """The highest sum of the bytes the CPU allocator holds while ``work()`` runs, above what it held before:
    the profiler records every allocation and free in order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                    nn.Linear(1024, 10))

    def forward(self, views, labels):
        return {"loss": F.cross_entropy(self.layers(views[0]), labels)}


def test_activation_memory_bounds_the_measured_peak():
    # The bound the planner uses (common.plan.plan_config's `fits`): the tensors saved for backward are all alive
    # when the forward pass ends, so they are a lower bound of the peak; at any moment of the backward pass the
    # allocator holds at most those, the parameters' gradients, and a layer's output gradient beside its input
    # gradient -- two tensors no larger than the largest saved one -- which makes the upper bound.
    torch.manual_seed(0)
    model, batch = MLP(), 64

    def make():
        return [torch.randn(batch, 256)], torch.randint(0, 10, (batch,))

    count = count_pass(model, *make())
    model.zero_grad(set_to_none=True)
    gradients = sum(4 * p.numel() for p in model.parameters())

    def step():
        views, labels = make()  # inside the measurement: the first layer keeps its input for backward
        model(views, labels)["loss"].backward()

    peak = cpu_peak_bytes(step)
    assert count.activation_bytes <= peak <= count.activation_bytes + gradients + 2 * count.largest_activation_bytes


def test_plan_of_a_paper_config(capsys):
    plan = plan_config(SIMCLR, gpus=2, gpu_memory_gib=80)
    assert plan.trainer == "stochcon/train.py" and plan.method == "simclr"
    assert plan.views == "2x28" and plan.accumulation == 1 and plan.per_device_batch == plan.batch_size // 2
    epochs = yaml.safe_load(SIMCLR.read_text())["epochs"]
    assert plan.steps == 60_000 // plan.batch_size * epochs  # Fashion-MNIST's 60,000 training images
    # a third of the activations' memory needs accumulation: SimCLR's loss couples the batch, so by gradient
    # caching, whose first pass is one more forward per micro-batch; plain accumulation (grad_cache=false) adds
    # nothing, and its micro-batches' losses compare fewer pairs
    small = plan_config(SIMCLR, gpus=2,
                        gpu_memory_gib=(plan.static_gib + plan.activation_gib / 3))
    assert small.accumulation > 1 and small.max_micro_batch < plan.per_device_batch
    assert small.gradient_caching and small.flops_per_image > plan.flops_per_image
    plain = plan_config(SIMCLR, gpus=2, gpu_memory_gib=(plan.static_gib + plan.activation_gib / 3),
                        overrides=("grad_cache=false",))
    assert not plain.gradient_caching and plain.accumulation == small.accumulation
    assert plain.flops_per_image <= plan.flops_per_image
    table = markdown_table([plan], [("x.yaml", "data folder x not found")], "python -m common.plan --all", 2, 80,
                           989, 0.35).splitlines()
    header = next(line for line in table if line.startswith("| config"))
    row = next(line for line in table if line.startswith(f"| {plan.config} "))
    assert row.count("|") == header.count("|") and "| meta |" in row
    assert "- x.yaml: data folder x not found" in table
    assert main(["--config", str(SIMCLR), "--gpus", "2"]) == 0
    assert "GFLOP (forward + backward" in capsys.readouterr().out
