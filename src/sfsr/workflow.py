"""Glue for ``workflow_scripts/*.py`` (run by Snakemake's ``script:`` directive).

:func:`run_rule` sends logging, warnings and stdout/stderr of the job to the rule's ``log:`` file,
calls the handler registered for the running rule and turns a user error
(:class:`sfsr.errors.SfsrError`) into one clear message in the log and on the console, with exit
status 1 so Snakemake marks the job failed (and removes its incomplete outputs).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from typing import Any, Callable

from sfsr.errors import SfsrError


def run_rule(smk: Any, handlers: dict[str, Callable[[Any], None]]) -> None:
    rule = smk.rule
    if rule not in handlers:
        raise SystemExit(f"{smk.scriptdir if hasattr(smk, 'scriptdir') else 'workflow script'}: "
                         f"no handler for rule {rule!r} (known: {', '.join(handlers)})")
    log_path = smk.log[0] if len(smk.log) else None
    log_fh = open(log_path, "w", encoding="utf-8", buffering=1) if log_path else sys.stderr
    console = sys.__stderr__
    handler = logging.StreamHandler(log_fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stdout(log_fh), contextlib.redirect_stderr(log_fh):
            handlers[rule](smk)
    except SfsrError as exc:
        logging.getLogger("sfsr").error("%s", exc)
        print(f"\n[sfsr] rule {rule} failed: {exc}\n", file=console)
        raise SystemExit(1) from None
    except BaseException:
        traceback.print_exc(file=log_fh)
        raise
    finally:
        if log_fh is not sys.stderr:
            log_fh.close()
