"""The report: every analysis figure of a campaign in one standalone HTML file (plotly.js inlined, so it
opens with no network), the findings in words, a table of studies; optionally PNGs; and the same figures
and findings pushed into optuna-dashboard (custom plots and the study note) so the dashboard shows them.

The findings are `analysis.findings`: each comparison with n seeds, the mean difference, its 95 % interval
and a verdict (search/stats.py), each selection with what it rests on. `HOW_TO_READ` heads them in both
places.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.io as pio

from dal_search.search import analysis
from dal_search.search.analysis import NotEnoughTrials


HOW_TO_READ = ("Each comparison gives the mean difference over seeds in points of accuracy, its 95 % interval "
               "(Student t over seeds, paired by seed: a seed is one noise draw and split, the same for every arm) "
               "and a verdict: better / worse when the interval excludes 0, no detectable difference when it "
               "contains 0, too few seeds to tell under 3 seeds. Best trials, the best baseline and the best "
               "q_s x q_e point are chosen on the campaign's selection metric, never on test accuracy unless the "
               "campaign's metric is a test accuracy.")


def figures(storage: optuna.storages.BaseStorage, campaign: str | None) -> list[tuple[str, go.Figure | str]]:
    """(title, figure) for each analysis figure of the campaign (analysis.FIGURES); a figure that cannot be drawn
    is its reason."""
    studies = analysis.campaign_studies(storage, campaign)
    if not studies:
        raise NotEnoughTrials(f"not enough trials: no studies of campaign {campaign!r} in this storage")
    out: list[tuple[str, go.Figure | str]] = []
    for title, draw in analysis.figure_items(studies):
        try:
            out.append((title, draw()))
        except NotEnoughTrials as e:
            out.append((title, str(e)))
    return out


def write_report(storage: optuna.storages.BaseStorage, campaign: str | None, out_html: str | Path,
                 png_dir: str | Path | None = None, figs: list | None = None) -> Path:
    """Write the standalone HTML report (and PNGs into `png_dir`); `figs` reuses figures() already drawn."""
    from dal_search.storage.export import study_summaries

    out = Path(out_html)
    figs = figures(storage, campaign) if figs is None else figs
    studies = analysis.campaign_studies(storage, campaign)
    found = analysis.findings(studies)
    rows = [r for r in study_summaries(storage) if campaign is None or r.get("campaign") == campaign]
    parts = [f"<h1>dal-search report: {html.escape(str(campaign or 'all campaigns'))}</h1>",
             "<h2>Findings</h2>",
             (f"<p class='how'>{html.escape(HOW_TO_READ)}</p><ul class='findings'>"
              + "".join(f"<li>{html.escape(f)}</li>" for f in found) + "</ul>") if found
             else "<p>Not enough trials for findings yet.</p>"]
    first = True
    for title, fig in figs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p class='missing'>{html.escape(fig)}</p>")
            continue
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
        first = False
    cols = ["name", "complete", "running", "pruned", "failed", "waiting", "best_value", "best_test_acc"]
    parts.append("<h2>Studies</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows) + "</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>dal-search report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.missing{color:#a33}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if png_dir is not None:
        write_pngs([(t, f) for t, f in figs if not isinstance(f, str)], Path(png_dir))
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]


class NoRenderer(ValueError):
    """No way to turn a figure into a PNG here; the message names the fix."""


def png_renderer() -> str:
    """'kaleido' or 'chromium': what `write_pngs` will use, or NoRenderer naming the fix. Chromium is
    $DAL_SEARCH_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium, driven by playwright."""
    try:
        import kaleido  # noqa: F401

        return "kaleido"
    except ImportError:
        pass
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise NoRenderer("no PNG renderer: install one with pip install 'dal-search[png]' (playwright) and "
                         "apt-get install chromium, or pip install kaleido; or drop --png-dir") from None
    if not Path(_chromium()).is_file():
        raise NoRenderer(f"no PNG renderer: chromium not found at {_chromium()}; apt-get install chromium (or "
                         f"set DAL_SEARCH_CHROMIUM to its path), or drop --png-dir")
    return "chromium"


def _chromium() -> str:
    return os.environ.get("DAL_SEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def write_pngs(figs: list[tuple[str, go.Figure]], folder: Path) -> list[Path]:
    """PNG of each figure: kaleido when installed, else headless Chromium (the Debian package) driven by
    Playwright. Raises NoRenderer (naming the fix) when neither is there, before writing anything."""
    renderer = png_renderer()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:02d}-{_slug(t)}.png" for i, (t, _) in enumerate(figs)]
    if renderer == "kaleido":
        for (_, fig), p in zip(figs, paths):
            fig.write_image(str(p))
        return paths
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        for (_, fig), path in zip(figs, paths):
            width, height = int(fig.layout.width or 900), int(fig.layout.height or 450)
            page.set_viewport_size({"width": width + 20, "height": height + 20})
            page.set_content(pio.to_html(fig, full_html=True, include_plotlyjs=True,
                                         config={"staticPlot": True}))
            page.wait_for_selector(".js-plotly-plot .main-svg")
            page.locator(".js-plotly-plot").first.screenshot(path=str(path))
        browser.close()
    return paths


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def push_to_dashboard(storage: optuna.storages.BaseStorage, campaign: str | None, figs: list | None = None) -> int:
    """Save each figure into the studies it is about (optuna-dashboard shows them on the study page) and the
    findings as each study's note. Returns the number of figures saved. Saving again replaces (same ids)."""
    from optuna_dashboard import save_note, save_plotly_graph_object

    studies = analysis.campaign_studies(storage, campaign)
    found = analysis.findings(studies)
    saved = 0
    figs = figures(storage, campaign) if figs is None else figs
    for study in studies:
        for i, (title, fig) in enumerate(figs):
            if isinstance(fig, str):
                continue
            if title.startswith("Importances: ") and title != f"Importances: {study.study_name}":
                continue
            # the dashboard draws each figure in a half-width card: let plotly size it to the card
            fitted = go.Figure(fig).update_layout(width=None, autosize=True, height=440)
            save_plotly_graph_object(study, fitted, graph_object_id=f"dal-{_slug(title)}")
            saved += 1
        note = [f"## dal-search: {study.study_name}", "", HOW_TO_READ, "", *(f"- {f}" for f in found)] if found \
            else [f"## dal-search: {study.study_name}", "", "Not enough trials for findings yet."]
        save_note(study, "\n".join(note))
    return saved
