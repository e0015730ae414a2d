"""Reports: figures and pages drawn from plain records (estimate and profile dicts, optimizer rows).

- `memprof.reports.data`: the numbers each figure draws, shaped from the records (no matplotlib), so
  tests can check them and notebooks can print them;
- `memprof.reports.figures`: one function per figure, `matplotlib.figure.Figure` out (headless Agg);
- `memprof.reports.page`: what `memprof report` writes, a PNG or a self-contained HTML page.

Nothing here is imported by `import memprof`: matplotlib loads only when a figure is asked for.
"""
