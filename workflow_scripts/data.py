"""Entry point of the data stage (rules/data.smk): download, extract, prepare, make_lr.

Each function receives Snakemake's ``snakemake`` object; the work is done in ``sfsr.data``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821  this checkout's sfsr

from sfsr.data import download as dl
from sfsr.data import prepare as prep
from sfsr.data.raw import assemble_raw
from sfsr.workflow import run_rule


def download(smk):
    entry = smk.params.entry
    dl.fetch(entry["url"], Path(smk.output[0]), sha256=entry["sha256"], md5=entry["md5"],
             lock_file=Path(smk.params.lock), progress=True)


def extract(smk):
    dest = Path(smk.output[0])
    spec = smk.params.spec
    entries = {Path(p).name: e for p, e in zip(smk.input, spec["files"])} if spec["files"] else {}
    assemble_raw([Path(p) for p in smk.input], dest,
                      extract={name: e.get("extract", True) for name, e in entries.items()})


def prepare(smk):
    source_root = Path(smk.input[0]) if len(smk.input) else None
    prep.prepare_dataset(smk.wildcards.dataset, smk.params.spec, source_root,
                         Path(smk.output.manifest).parent, on_bad_image=smk.params.on_bad_image,
                         min_size=smk.params.min_size, max_scale=smk.params.max_scale,
                         seed=smk.params.seed)


def make_lr(smk):
    prep.make_lr_folder(smk.input.hr, smk.output[0], int(smk.wildcards.scale), progress=True)


run_rule(snakemake, {"download": download, "extract": extract, "prepare": prepare,  # noqa: F821
                     "make_lr": make_lr})
