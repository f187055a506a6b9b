import subprocess

import pytest
import torch

from labkit.core import machine, measure, parts, train
from labkit.prune import prune
from labkit.quant import floats as precision
from labkit.quant import quantize

FAMILIES = [f.name for f in parts.FAMILIES]


def test_formats_come_from_finfo():
    f = precision.FORMATS
    assert (f["bf16"].exponent, f["bf16"].mantissa, f["bf16"].bits) == (8, 7, 16)
    assert (f["fp16"].exponent, f["fp16"].mantissa) == (5, 10) and f["fp16"].max == 65504.0
    assert (f["fp32"].exponent, f["fp32"].mantissa) == (8, 23)
    assert (f["fp64"].exponent, f["fp64"].mantissa) == (11, 52)
    assert (f["fp8_e4m3"].exponent, f["fp8_e4m3"].mantissa, f["fp8_e4m3"].max) == (4, 3, 448.0)
    assert (f["fp8_e5m2"].exponent, f["fp8_e5m2"].mantissa, f["fp8_e5m2"].max) == (5, 2, 57344.0)
    for fmt in f.values():
        info = torch.finfo(fmt.dtype)
        assert fmt.sign + fmt.exponent + fmt.mantissa == fmt.bits == info.bits
        assert (fmt.max, fmt.smallest_normal, fmt.eps) == (info.max, info.smallest_normal, info.eps)
    assert f["bf16"].max > 1e38 > f["fp16"].max  # bf16 keeps fp32's range, fp16 does not
    half = precision.float_format("half", torch.float16)
    assert (half.name, half.exponent, half.mantissa, half.max) == ("half", 5, 10, 65504.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_to_precision_on_every_family(family, tokenizer):
    model = parts.tiny_classifier(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32_bytes = measure.serialized_bytes(model)
    batch = dict(tokenizer(["a fine film", "a dull, long film"], padding=True, return_tensors="pt"))
    with torch.inference_mode():
        ref = model(**parts.feed(model, batch)).logits
    for name in ("bf16", "fp16"):
        cast = precision.to_precision(model, name)
        assert parts.dtype_of(cast) == name and parts.dtype_of(model) == "fp32"
        assert abs(measure.serialized_bytes(cast) / fp32_bytes - 0.5) < 0.01  # half the bytes, from safetensors
        with torch.inference_mode():
            logits = cast(**parts.feed(cast, batch)).logits  # the same tokenized inputs, ids still integers
        assert logits.dtype == precision.FORMATS[name].dtype
        assert torch.allclose(logits.float(), ref, atol=0.05)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    same = precision.to_precision(model, "bf16", inplace=True)
    assert same is model and parts.dtype_of(model) == "bf16"
    assert parts.dtype_of(precision.to_precision(model, "fp32")) == "fp32"


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_to_precision_returns_a_model_safe_to_change_even_in_the_same_dtype(tiny_model, name):
    source = tiny_model if name == "fp32" else precision.to_precision(tiny_model, name)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    out = precision.to_precision(source, name)  # already in that dtype: still a copy
    assert out is not source and parts.dtype_of(out) == name
    with torch.no_grad():
        for t in list(out.parameters()) + list(out.buffers()):
            t.fill_(1) if t.is_floating_point() else t.zero_()
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())


def test_to_precision_refusals(tiny_model, monkeypatch):
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        precision.to_precision(tiny_model, "fp8_e4m3")
    monkeypatch.setattr(precision, "_fp16_error", lambda device: '"addmm" not implemented for "Half"')
    with pytest.raises(ValueError, match="Use 'bf16'"):
        precision.to_precision(tiny_model, "fp16")
    int8 = torch.ao.quantization.quantize_dynamic(tiny_model, {torch.nn.Linear}, dtype=torch.qint8)
    with pytest.raises(ValueError, match="already int8-quantized.*pass the float model"):
        precision.to_precision(int8, "bf16")
    parts.require_fp32(tiny_model)  # fp32: nothing to say
    with pytest.raises(ValueError, match="int8 conversion needs a float32 model, and this one is bf16"):
        parts.require_fp32(precision.to_precision(tiny_model, "bf16"))


def test_autocast_contexts():
    with train.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with train.autocast(torch.nn.Linear(2, 2), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.nn.Linear(4, 4)(torch.ones(1, 4))).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="use 'bf16'"):
        train.autocast("cpu", "fp16")
    with pytest.raises(ValueError, match="Unknown precision"):
        train.autocast("cpu", "float16")


TRAIN = (["a fine film", "a dull film", "great acting", "boring plot"] * 4, [1, 0, 1, 0] * 4)


def _loss(model, tokenizer) -> float:
    enc = dict(tokenizer(TRAIN[0], padding=True, return_tensors="pt"))
    with torch.no_grad():
        return float(model(**enc, labels=torch.tensor(TRAIN[1])).loss)


def test_fit_bf16_keeps_fp32_master_weights(tokenizer):
    model, fp32 = parts.tiny_classifier("BERT"), parts.tiny_classifier("BERT")
    before = _loss(model, tokenizer)
    hist = train.fit(model, tokenizer, *TRAIN, steps=8, lr=1e-2, batch_size=8, precision="bf16")
    ref = train.fit(fp32, tokenizer, *TRAIN, steps=8, lr=1e-2, batch_size=8)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert _loss(model, tokenizer) < before  # it learned (eval mode, the whole set: no dropout noise)
    assert all(abs(a["loss"] - b["loss"]) < 0.05 for a, b in zip(hist, ref))  # bf16 follows fp32 closely
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fp32.parameters()))  # but is not it


def test_fit_refuses_bad_precisions(tokenizer):
    model = parts.tiny_classifier("DistilBERT")
    with pytest.raises(ValueError, match="use 'bf16'"):
        train.fit(model, tokenizer, *TRAIN, steps=1, precision="fp16")
    with pytest.raises(ValueError, match="Unknown precision 'int8'"):
        train.fit(model, tokenizer, *TRAIN, steps=1, precision="int8")
    with pytest.raises(ValueError, match="fp32 weights"):
        train.fit(precision.to_precision(model, "bf16"), tokenizer, *TRAIN, steps=1, precision="bf16")


def test_native_float_support_reads_fake_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", str(fake))
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 f16c fma\n")  # an AVX2 laptop: f16c only converts
    got = machine.native_float_support()
    assert (got["bf16"], got["fp16"], got["vnni"], got["amx"]) == (False, False, False, False)
    assert got["capability"] == torch.backends.cpu.get_cpu_capability() and got["found"] == []
    fake.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")  # the AMD EPYC of issue 16
    assert machine.native_float_support() | {"capability": None} == {
        "capability": None, "bf16": True, "fp16": False, "vnni": True, "amx": False,
        "found": ["avx512_bf16", "avx512_vnni"]}
    fake.write_text("flags\t\t: fpu avx512_fp16 amx_tile amx_bf16 amx_int8 amx_fp16\n")  # a Sapphire Rapids and up
    assert all(machine.native_float_support()[k] for k in ("bf16", "fp16", "vnni", "amx"))
    fake.write_text("processor\t: 0\nFeatures\t: fp asimd fphp asimdhp asimddp bf16 i8mm\n")  # an ARM Neoverse
    got = machine.native_float_support()
    assert (got["bf16"], got["fp16"], got["vnni"], got["amx"]) == (True, True, True, False)
    fake.unlink()  # no cpuinfo: nothing claimed
    got = machine.native_float_support()
    assert (got["bf16"], got["fp16"], got["vnni"], got["amx"], got["found"]) == (None, None, None, None, [])


def test_native_float_support_reads_macos_sysctl(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "none"))  # macOS: no /proc/cpuinfo
    monkeypatch.setattr(machine.platform, "system", lambda: "Darwin")
    answers = {}

    def sysctl(cmd, **kwargs):
        assert cmd[0] == "sysctl"
        out = "".join(f"{name}: {answers[name]}\n" for name in cmd[1:] if name in answers)
        return subprocess.CompletedProcess(cmd, 0 if len(answers) == len(cmd) - 1 else 1, out, "unknown oid")

    monkeypatch.setattr(machine.subprocess, "run", sysctl)
    answers.update({"hw.optional.arm.FEAT_BF16": 0, "hw.optional.arm.FEAT_FP16": 1,
                    "hw.optional.arm.FEAT_DotProd": 1})  # an Apple M1: fp16 and dot products, no bf16
    got = machine.native_float_support()
    assert (got["bf16"], got["fp16"], got["vnni"], got["amx"]) == (False, True, True, False)
    answers["hw.optional.arm.FEAT_BF16"] = 1  # an M2 and later (ARMv8.6): bf16 too
    assert machine.native_float_support()["bf16"] is True
    answers.clear()  # nothing answered (an Intel Mac knows none of these names): nothing claimed
    assert machine.native_float_support()["bf16"] is None
    monkeypatch.setattr(machine.platform, "system", lambda: "Windows")
    assert machine.sysctl_features() is None


def test_fit_fp16_path_scales_the_loss(tokenizer, monkeypatch):
    # There is no GPU here: let fp16 autocast run on the CPU (torch supports it) to exercise the GradScaler path.
    monkeypatch.setattr(train, "autocast", lambda device, name: torch.autocast("cpu", dtype=torch.float16))
    scaled = []
    real = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(loss) or real(self, loss))
    model = parts.tiny_classifier("BERT")
    start = [p.clone() for p in model.parameters()]
    hist = train.fit(model, tokenizer, *TRAIN, steps=3, lr=1e-3, batch_size=8, precision="fp16")
    assert len(scaled) == 3 and len(hist) == 3
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters()))  # the scaler let steps through
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_recover_and_qat_train_under_bf16_autocast_with_fp32_weights(tokenizer):
    tiny = parts.tiny_classifier("DistilBERT")
    pruned = prune.magnitude(tiny, 0.5)
    zeros = {n: int((m.weight == 0).sum()) for n, m in parts.linears(pruned, "blocks").items()}
    out = prune.recover(pruned, tokenizer, steps=2, precision="bf16")
    assert parts.dtype_of(out) == "fp32"
    assert all(int((m.weight == 0).sum()) >= zeros[n] for n, m in parts.linears(out, "blocks").items())
    q = quantize.qat(tiny, tokenizer, bits=4, group_size=16, steps=2, batch_size=4, precision="bf16")
    assert parts.dtype_of(q) == "fp32" and parts.dtype_of(tiny) == "fp32"
    with pytest.raises(ValueError, match="bf16"):
        prune.recover(pruned, tokenizer, steps=1, precision="fp16")  # fp16 autocast is for CUDA


def test_training_speed_interleaves_fit_steps_on_one_copy(tiny_model, tokenizer, monkeypatch):
    order, trained = [], set()
    real = train.fit_steps

    def spy(model, *a, precision="fp32", **k):
        trained.add(id(model))
        for rec in real(model, *a, precision=precision, **k):
            order.append(precision)
            yield rec
    monkeypatch.setattr(train, "fit_steps", spy)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    df = precision.training_speed(tiny_model, tokenizer, steps=2, warmup=1, batch_size=4).set_index("precision")
    assert order == ["fp32", "bf16"] * 3  # one step of each in turn
    assert len(trained) == 1 and id(tiny_model) not in trained  # one copy takes every precision's steps
    assert list(df.index) == ["fp32", "bf16"] and (df["steps"] == 2).all() and (df["batch_size"] == 4).all()
    assert df.loc["fp32", "speedup"] == 1.0 and (df["speedup_lo"] <= df["speedup_hi"]).all()
    assert (df["step_ms"] > 0).all() and df["loss"].notna().all()
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())  # the caller's model untouched
    with pytest.raises(ValueError, match="steps >= 1"):
        precision.training_speed(tiny_model, tokenizer, steps=0)
    with pytest.raises(ValueError, match="use 'bf16'"):  # refused before any step is taken
        precision.training_speed(tiny_model, tokenizer, precisions=("fp16",), steps=1)


def test_training_speed_trains_lean_where_memory_is_tight(tiny_model, tokenizer, monkeypatch):
    seen = []
    real = train.fit_steps

    def spy(model, *a, fused=False, **k):
        for rec in real(model, *a, fused=fused, **k):
            seen.append((fused, model.get_input_embeddings().weight.requires_grad))
            yield rec
    monkeypatch.setattr(train, "fit_steps", spy)
    monkeypatch.setenv("LABKIT_LEAN", "1")
    precision.training_speed(tiny_model, tokenizer, steps=1, warmup=0, batch_size=4)
    assert seen == [(True, False)] * 2  # fused AdamW and the word embeddings frozen, for both precisions
    assert tiny_model.get_input_embeddings().weight.requires_grad  # the caller's model untouched


def test_fit_steps_checks_arguments_first_and_ends_in_eval_mode(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="use 'bf16'"):
        train.fit_steps(tiny_model, tokenizer, *TRAIN, steps=1, precision="fp16")  # before any step is taken
    run = train.fit_steps(tiny_model, tokenizer, *TRAIN, steps=2, batch_size=8)
    first = next(run)
    assert first["step"] == 0 and tiny_model.training
    assert [r["step"] for r in run] == [1] and not tiny_model.training


def test_is_native_reads_the_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(machine, "CPUINFO", str(fake))
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert precision.is_native("fp32") is True
    assert precision.is_native("bf16") is False and precision.is_native("fp16", torch.nn.Linear(2, 2)) is False
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert precision.is_native("bf16", "cpu") is True and precision.is_native("fp16", "cpu") is False
    fake.unlink()  # flags unreadable: unknown, not a guess
    assert precision.is_native("bf16") is None
    with pytest.raises(ValueError, match="Unknown precision"):
        precision.is_native("int8")
