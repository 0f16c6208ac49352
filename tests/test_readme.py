"""The README's Python snippets run as they are, the public API is the small documented one, and docs/RESULTS.md
names the campaign files that re-create it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)


def test_readme_has_python_snippets():
    assert len(_python_blocks()) >= 3


@pytest.mark.slow
def test_readme_python_snippets_run_in_order(tmp_path):
    # one interpreter, the blocks in order, in an empty folder (runs/ lands there), as a reader would paste them
    script = "\n\n".join(_python_blocks())
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DAL_SEARCH_STORAGE": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "of the labels are wrong" in proc.stdout
    assert "mine/dal/digits/symmetric-0.4 3" in proc.stdout  # the DAL arm ran its budget of 3
    assert "mine/gce/digits/symmetric-0.4 1" in proc.stdout  # a fixed arm runs once
    assert (tmp_path / "runs" / "mine-best.yaml").is_file()
    # the export re-runs through the CLI
    rerun = subprocess.run([sys.executable, "-m", "dal_search", "train", "--config",
                            "runs/mine-best.yaml#mine/dal/digits/symmetric-0.4", "--quiet"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_public_api_is_small_and_lazy():
    code = ("import sys, dal_search; assert 'torch' not in sys.modules; "
            "names = sorted(dal_search.__all__); print(names); "
            "from dal_search import DALLoss, TrainConfig, run_campaign, export_best, LOSSES; "
            "assert callable(run_campaign) and 'dal' in LOSSES.names()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert eval(proc.stdout) == sorted(["DALLoss", "dal_schedule", "corrupt_labels", "TrainConfig", "train",
                                        "run_campaign", "export_best", "LOSSES", "SCHEDULES", "NOISE_KINDS",
                                        "DATASETS", "MODELS"])


def test_dal_loss_module_equals_the_functional_loss_every_epoch():
    import torch

    from dal_search import DALLoss, dal_schedule
    from dal_search.objectives.losses import dal

    loss = DALLoss(num_classes=5, q_start=0.5, q_end=2.0, epochs=8, schedule="cosine", bootstrap="hard",
                   bootstrap_scale=0.5)
    z, y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 0])
    for epoch, (q, lam) in enumerate(dal_schedule(0.5, 2.0, 8, "cosine")):
        loss.set_epoch(epoch)
        assert (loss.q, loss.lam) == (q, lam)
        assert loss(z, y).item() == dal(z, y, q, 0.5 * lam, "hard").item()
    with pytest.raises(ValueError, match=r"logits of shape \(N, 5\)"):
        loss(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="epoch must be in 0..7"):
        loss.set_epoch(8)
    with pytest.raises(ValueError, match="unknown schedule"):
        DALLoss(5, schedule="zigzag")


def test_results_reproduce_table_names_every_campaign_file_with_its_campaign_name():
    """docs/RESULTS.md's Reproduce table lists each file of docs/campaigns/ (but the tune ones, which have
    their own script) with the name its studies carry; every file loads, and the names are distinct, as the
    commands put every campaign into one storage."""
    from dal_search.search.campaign import load_campaign

    results = (ROOT / "docs" / "RESULTS.md").read_text()
    listed = dict(re.findall(r"^\| ([\w-]+\.yaml) \| ([\w-]+) \| [\d,]+ \|", results, re.M))
    files = sorted(p for p in (ROOT / "docs" / "campaigns").glob("*.yaml") if "tune" not in p.name)
    names = {p.name: load_campaign(p).name for p in files}
    assert listed == names
    assert len(set(names.values())) == len(names)
