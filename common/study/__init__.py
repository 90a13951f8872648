"""One runner for every paper's study (``common.study.cli``): a paper's study is the package ``<paper>.study``
with ``PAPER`` (its name, the folder of its runs), ``jobs(ctx)`` (``common.study.jobs.Job`` for every run,
evaluation and analysis) and ``report(ctx, command)`` (its tables and figures, written with
``common.study.report``). ``common`` imports no paper: the runner loads ``<paper>.study`` by name.
"""
