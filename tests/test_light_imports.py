"""Light jobs stay light: the modules behind metrics, LR making, evaluation tables, plots and the
CLI's make-lr / evaluate import neither torch nor scikit-learn (torch is imported only where a
model runs). Each check runs in a fresh interpreter, since this test process has torch loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "sklearn")

LIGHT_MODULES = ["sfsr.metrics", "sfsr.evaluation", "sfsr.classification", "sfsr.data.bicubic",
                 "sfsr.data.prepare", "sfsr.data.manifest",
                 "sfsr.plots", "sfsr.io", "sfsr.cli", "sfsr.data.images", "sfsr.provenance",
                 "sfsr.gpu_slots", "sfsr.workflow"]


def _heavy_after(code: str) -> list[str]:
    script = "\n".join([
        "import json, sys",
        f"sys.path.insert(0, {str(REPO / 'src')!r})",
        code,
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))",
    ])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_light_modules_import_no_torch_or_sklearn():
    assert _heavy_after("\n".join(f"import {m}" for m in LIGHT_MODULES)) == []


def test_light_work_runs_without_torch(tmp_path):
    """Not only the imports: make LR, per-image metrics, a summary and the CLI's make-lr / evaluate
    run without loading torch or scikit-learn."""
    rng = np.random.default_rng(0)
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(hr_dir / f"im{i}.png")
    code = f"""
from pathlib import Path
import numpy as np
from sfsr.cli import main
from sfsr.data.bicubic import imresize
from sfsr.evaluation import evaluate_folders, summarize, mean_metrics
from sfsr.metrics import to_uint8
tmp = Path({str(tmp_path)!r})
assert main(["make-lr", "--scale", "4", "--quiet", str(tmp / "hr"), str(tmp / "lr")]) == 0
sr = tmp / "sr"
sr.mkdir()
from sfsr import io
from sfsr.data.images import read_image
for p in sorted((tmp / "lr").glob("*.png")):
    io.save_image(sr / p.name, imresize(read_image(p), 4))
assert main(["evaluate", "--hr", str(tmp / "hr"), "--sr", str(sr), "--scale", "4", "--json"]) == 0
table = evaluate_folders(tmp / "hr", sr, 4)
table["model"], table["dataset"], table["scale"] = "bicubic", "toy", 4
summarize(table, n_boot=50)
mean_metrics(table)
to_uint8(np.zeros((4, 4, 3)))
"""
    assert _heavy_after(code) == []


def test_workflow_scripts_light_rules_do_not_import_torch():
    """The entry scripts of the light rules import only light modules at the top (the model-running
    functions import sfsr.inference inside)."""
    for name in ("evaluate.py", "data.py", "report.py"):
        text = (REPO / "workflow_scripts" / name).read_text()
        head = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
        modules = [line.split()[1] for line in head if line.split()[1].startswith("sfsr")]
        imports = "\n".join(f"import {m}" for m in modules)
        assert _heavy_after(imports) == [], name


def test_sr_jobs_import_torch_but_not_torchvision():
    """torchvision's import costs ~1.5 s per job (it pulls torch._dynamo through torchvision.ops);
    only jobs that build a classifier or deform a reference need it. The SR training and upscale
    jobs import it only when an SSEN forward or a classifier (the semantic prior) runs."""
    imports = "\n".join(["import sfsr.training.loop", "import sfsr.inference", "import sfsr.models",
                         "import sfsr.training.classifier", "import sfsr.semantic"])
    assert _heavy_after(imports) == ["torch"]
    # and the lazy imports still work where they are needed
    assert _heavy_after("from sfsr.models.classifier import eval_transform\neval_transform(8, 8)\n"
                        "from sfsr.models import build_generator\nimport torch\n"
                        "m = build_generator('ssen', 2, num_blocks=1, num_features=8, offset_features=8)\n"
                        "m(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16))") == ["torch", "torchvision"]
