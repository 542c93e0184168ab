"""The training speed settings on CPU (sfsr.training.speed.speed_flags): native-bf16 detection from
the CPU flags (or SFSR_CPU_BF16), bf16 only where the CPU has it unless forced (``always``), the default on a CPU
without it bit-identical to float32, and a forced bf16 run that follows the float32 one.

Tiny models, real photo crops, CPU only.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from sfsr.errors import ConfigError
from sfsr.training import speed
from sfsr.training.loop import train
from sfsr.training.settings import TRAINING_DEFAULTS, resolve_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni{extra}
bugs\t\t: spectre_v1
"""


def test_cpu_flags_and_native_bf16_detection(detect):
    plain = speed.cpu_flags(CPUINFO.format(extra=""))
    assert {"avx512f", "avx512_vnni"} <= plain and not speed.cpu_has_native_bf16(plain)
    assert speed.cpu_has_native_bf16(speed.cpu_flags(CPUINFO.format(extra=" avx512_bf16")))
    assert speed.cpu_has_native_bf16(speed.cpu_flags(CPUINFO.format(extra=" amx_tile amx_bf16")))
    assert not speed.cpu_has_native_bf16(speed.cpu_flags(CPUINFO.format(extra=" amx_tile")))
    assert speed.cpu_flags("no flags here") == set()


@pytest.fixture
def detect(monkeypatch):
    """The CPU detection, whatever SFSR_CPU_BF16 the suite runs under."""
    monkeypatch.delenv(speed.CPU_BF16_ENV, raising=False)


@pytest.mark.parametrize("native", [False, True])
def test_speed_flags_on_cpu_follow_the_detected_flags(monkeypatch, detect, native):
    extra = " amx_bf16" if native else ""
    real = speed.cpu_flags
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: real(CPUINFO.format(extra=extra)))
    cpu = torch.device("cpu")
    defaults = {k: TRAINING_DEFAULTS[k] for k in speed.SPEED_FLAGS}
    assert defaults == {"bf16": True, "channels_last": True, "compile": False}
    assert speed.speed_flags(defaults, cpu) == {"bf16": native, "channels_last": False, "compile": False}
    auto = {"bf16": "auto", "channels_last": "auto", "compile": "auto"}
    assert speed.speed_flags(auto, cpu) == {"bf16": native, "channels_last": False, "compile": False}
    forced = {"bf16": "always", "channels_last": "always", "compile": False}
    assert speed.speed_flags(forced, cpu) == {"bf16": True, "channels_last": True, "compile": False}
    off = {"bf16": False, "channels_last": False, "compile": False}
    assert speed.speed_flags(off, cpu) == {"bf16": False, "channels_last": False, "compile": False}


@pytest.mark.parametrize("value,native", [("native", True), ("none", False), ("NATIVE", True), ("", None)])
def test_the_detection_can_be_overridden(monkeypatch, value, native):
    """SFSR_CPU_BF16 decides what ``bf16: true`` does on a CPU, whatever the CPU has; empty = detect."""
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx2"})  # no native bf16
    monkeypatch.setenv(speed.CPU_BF16_ENV, value)
    expected = False if native is None else native
    assert speed.cpu_has_native_bf16() is expected
    flags = speed.speed_flags({"bf16": True, "channels_last": True}, torch.device("cpu"))
    assert flags == {"bf16": expected, "channels_last": False, "compile": False}


def test_a_bad_override_names_the_variable(monkeypatch):
    monkeypatch.setenv(speed.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match="SFSR_CPU_BF16='yes'.*'native'.*'none'"):
        speed.cpu_has_native_bf16()


def test_one_log_line_says_what_runs(monkeypatch, caplog):
    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    cpu = torch.device("cpu")
    cases = [({"bf16": True, "channels_last": True}, "", "float32 (bf16: True, ignored: no AVX512-BF16/AMX on "
              "this CPU), contiguous, channels_last ignored on cpu (set 'always' to force)"),
             ({"bf16": True}, "native", "bf16 autocast on (SFSR_CPU_BF16=native), contiguous"),
             ({"bf16": "always", "channels_last": "always", "compile": "always"}, "",
              "bf16 autocast on (forced: bf16 always; this CPU emulates bf16, slower than float32), "
              "channels_last, torch.compile"),
             ({"bf16": False}, "", "float32, contiguous")]
    for cfg, env, line in cases:
        monkeypatch.setenv(speed.CPU_BF16_ENV, env)
        caplog.clear()
        with caplog.at_level("INFO", logger="sfsr.training"):
            speed.speed_flags(cfg, cpu, what="classifier training")
        assert caplog.messages == [f"classifier training on cpu: {line}"]


def test_speed_settings_accept_auto_and_always_only():
    for value in (True, False, "auto", "always"):
        assert resolve_config({"arch": "srresnet", "scale": 4, "bf16": value})["bf16"] == value
    bad = resolve_config({"arch": "srresnet", "scale": 4, "bf16": "sometimes"})
    with pytest.raises(ConfigError, match="'bf16' is 'sometimes'"):
        speed.speed_flags(bad, torch.device("cpu"))


def _cfg(**over) -> dict:
    cfg = dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8), iterations=8,
               batch_size=2, lr_patch=12, lr=1e-3, log_every=1, val_every=1000, checkpoint_every=1000,
               num_workers=0, ema_decay=None, compile=False)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory, photo_saver):
    return photo_saver(tmp_path_factory.mktemp("speed") / "train", "astronaut", "coffee", "chelsea")


def _run(train_dir, out, **over):
    gen = train("warmup", _cfg(**over), train_hr_dirs=[train_dir], valid_hr_dirs=[], out_dir=out,
                device="cpu", seed=0)
    prov = yaml.safe_load((out / "provenance.json").read_text())
    log = pd.read_csv(out / "train_log.csv").dropna(subset=["lr"]).set_index("iteration")
    return torch.load(gen, weights_only=True)["state_dict"], prov["speed_flags"], log["pixel"]


def test_default_on_a_cpu_without_native_bf16_is_float32_bit_for_bit(train_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(speed.CPU_BF16_ENV, "none")  # a CPU without native bf16
    default, flags, loss = _run(train_dir, tmp_path / "default", bf16=True, channels_last=True)
    assert flags == {"bf16": False, "channels_last": False, "compile": False}
    fp32, flags32, loss32 = _run(train_dir, tmp_path / "fp32", bf16=False, channels_last=False)
    assert flags32 == flags
    assert loss.tolist() == loss32.tolist()
    assert all(torch.equal(default[k], fp32[k]) for k in fp32)


def test_forced_bf16_on_cpu_follows_the_float32_run(train_dir, tmp_path):
    """bf16 autocast on the CPU (``always``) from the same seed: every logged L1 loss of 8 steps
    within 3% of the float32 run's (bf16 keeps 8 significant bits: ~0.4% per rounding), the loss
    going down as much, and the weights still close."""
    bf16, flags, loss16 = _run(train_dir, tmp_path / "bf16", bf16="always", channels_last=False)
    assert flags["bf16"] is True
    fp32, _, loss32 = _run(train_dir, tmp_path / "fp32", bf16=False, channels_last=False)
    rel = (loss16 / loss32 - 1).abs()
    assert torch.isfinite(torch.tensor(loss16.values)).all()
    assert rel.max() < 0.03, pd.DataFrame({"bf16": loss16, "fp32": loss32, "rel": rel})
    assert loss16.iloc[-1] < loss16.iloc[0] and loss32.iloc[-1] < loss32.iloc[0]
    assert loss16.iloc[-3:].mean() == pytest.approx(loss32.iloc[-3:].mean(), rel=0.03)
    for k in fp32:
        if fp32[k].is_floating_point():
            assert torch.allclose(bf16[k], fp32[k], rtol=0.05, atol=2e-3), k


def test_provenance_records_the_cpu_and_the_override(monkeypatch):
    """What can change the last bits of a result across machines is recorded beside it."""
    from sfsr import provenance

    text = "processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: avx2\n"
    assert provenance.cpu_model(text) == "AMD EPYC 9R14 96-Core Processor"
    monkeypatch.setenv(speed.CPU_BF16_ENV, "native")
    info = provenance.device_info()
    assert info["SFSR_CPU_BF16"] == "native" and info["torch_threads"] == torch.get_num_threads()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and info["cpu"]
    monkeypatch.delenv(speed.CPU_BF16_ENV)
    assert "SFSR_CPU_BF16" not in provenance.device_info()
