"""The paper's analyses of StochCon latents: bit counts (Figure 4), random-forest units (Figure 2 right),
aggregate variance (Figure 3) and the compression ratio of the binary code (footnote 2).

Each module holds the computation as pure functions of arrays plus a writer of JSON and a PNG plot;
`python -m stochcon.analysis <command>` runs them on training run folders.
"""
