"""Every analysis of the paper on one model and data set, written up as one self-contained HTML page.

:func:`run_report` runs, in order (each a *step*, cached under the output folder):

1. each attack of Table 3 and Table 4 over the evaluated images, streamed to
   ``DIR/adversarial/<key>.safetensors`` by :func:`nonrobust.streams.attack_to_file`
   (resumable inside the step) — every later table reads these files, so each
   attack runs once;
2. the ``population`` split, fitted on other images than the evaluated ones
   where the data set has them (the training split, else the rest of the split);
3. Table 1 and Table 2 under the per-image protocol (``paper`` by default) and
   under ``population``, side by side;
4. Fig. 2 (t-SNE), Fig. 3 (feature visualisation), Fig. 5 (β sweep) and the
   σ² distribution against T.

A step's result is stored in ``DIR/steps/<name>.json`` with a key made of
everything it depends on (model weights, images, its settings, the seed); a
rerun with the same settings reuses it, a killed run redoes only the step it
was in (and an attack resumes at its first unfinished batch). Only one report
may write into a folder at a time (``DIR/.lock``).

Outputs: ``report.html`` (tables, figures embedded as PNG, settings, versions,
seeds, machine, wall time of each step and a plain-language reading of each
result), ``results.json``, one CSV per table and ``figures/*.png``.
"""

from __future__ import annotations

from .readings import headline, readings
from .render import render_html
from .run import SECTIONS, ReportResults, run_report
from .settings import PROFILES, TABLE3_ATTACKS, TABLE4, ReportSettings, profile

__all__ = ["ReportSettings", "TABLE3_ATTACKS", "TABLE4", "PROFILES", "SECTIONS", "run_report", "ReportResults", "profile", "headline",
           "readings", "render_html"]
