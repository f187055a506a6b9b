"""labkit's labels in the learner's language: `t(text)` gives a widget's, plot's or readout's English text in the
language LABKIT_LANG names, read at each call ("zh": Chinese from the one table STRINGS; anything else, or a text
the table lacks, English). A Chinese notebook's first cell sets LABKIT_LANG=zh (labkit.course.i18n builds those notebooks).
"""

from __future__ import annotations

from labkit.core import settings

# Every label labkit shows that has a Chinese form, keyed by its English. Texts with {fields} are templates
# (t(text, field=...) fills them). A label missing here is shown in English: nothing breaks.
STRINGS: dict[str, str] = {
    # widget descriptions (set in the notebooks' code cells, shown through widgets.live)
    "bits": "位宽",
    "bits (sim.)": "位宽（模拟）",
    "precision": "精度",
    "batch": "批大小",
    "sparsity": "稀疏度",
    "atoms": "原子数",
    "keep ratio": "保留比例",
    "start layer": "起始层",
    "structured": "结构化",
    "quantization": "量化",
    # choices (the values stay English: only their labels change)
    "asymmetric": "非对称",
    "symmetric": "对称",
    "tensor": "逐张量",
    "channel": "逐通道",
    "group": "逐组",
    "layer": "逐层",
    "global": "全局",
    "magnitude": "幅值",
    "random": "随机",
    "none": "无",
    "simulated": "模拟",
    "real int8": "真实 int8",
    # widgets.live's message when a function refuses a setting
    "Not possible with these settings: {error}": "这组设置无法运行：{error}",
    # plots
    "test accuracy": "测试集准确率",
    "batch-32 latency (ms, median)": "批大小 32 的延迟（毫秒，中位数）",
    "serialized size (MB)": "序列化大小（MB）",
    "Pareto front": "帕累托前沿",
    "95% interval": "95% 置信区间",
    "marker area: size (MB); * on the front": "点的面积：大小（MB）；* 表示在前沿上",
    "current": "当前",
    "accuracy": "准确率",
    "latency_b32_ms": "批大小 32 的延迟（毫秒）",
    "latency_b1_ms": "批大小 1 的延迟（毫秒）",
    "size_mb": "大小（MB）",
    "batch-32 latency, ms (grey: simulated, runs at float speed)":
        "批大小 32 的延迟，毫秒（灰色：模拟量化，以浮点速度运行）",
    "accuracy (quick validation subset)": "准确率（验证集快速子集）",
    "accuracy %": "准确率 %",
    "agreement %": "一致率 %",
    "latency ms": "延迟（毫秒）",
    "size MB": "大小（MB）",
    "{name} (simulated)": "{name}（模拟）",
    "sign": "符号位",
    "exponent": "指数位",
    "mantissa": "尾数位",
    "{bits} bits, max {max}, eps {eps}": "{bits} 位，最大值 {max}，eps {eps}",
    "bits (sign | exponent: the range | mantissa: the precision)": "位（符号 | 指数：范围 | 尾数：精度）",
    "accuracy on the quick subset": "快速子集上的准确率",
    "global magnitude, before and after recovery": "全局幅值剪枝：恢复训练前后",
    "accuracy drop (points, validation split)": "准确率下降（百分点，验证集）",
    "stage": "阶段",
    "before": "恢复前",
    "after": "恢复后",
    "kB": "kB",
    "ms (median), 32 x 30 tokens": "毫秒（中位数），32 × 30 个词元",
    "{rows}x{cols} at sparsity {sparsity}": "{rows}x{cols}，稀疏度 {sparsity}",
    "density (kept fraction)": "密度（保留比例）",
    "ms (median)": "毫秒（中位数）",
    "layer kB": "该层 kB",
    "accuracy, 95% interval (validation subset)": "准确率，95% 置信区间（验证集子集）",
    "dictionary codes (k atoms/row)": "字典编码（每行 k 个原子）",
    "magnitude pruning, same bytes": "幅值剪枝，字节数相同",
    "{kept} of {total} word pieces survive": "{total} 个词片中保留了 {kept} 个",
    "{score} score": "{score} 得分",
    "batch-32 latency (ms, median; each point timed on its own)": "批大小 32 的延迟（毫秒，中位数；每个点单独计时）",
    "accuracy, 95% interval (quick {split} subset)": "准确率，95% 置信区间（{split} 快速子集）",
    # a slider point's readout (lab.points.Point.readout)
    "accuracy {ci}": "准确率 {ci}",
    "agreement {value}": "与基线一致率 {value}",
    "vs baseline {delta} points [{lo}, {hi}], p = {p}": "相对基线 {delta} 个百分点 [{lo}, {hi}]，p = {p}",
    "{ms} ms at batch 32": "批大小 32 时 {ms} 毫秒",
    "{speedup}x {spread}": "{speedup} 倍 {spread}",
    "{mb} MB": "{mb} MB",
    "({ratio}x smaller)": "（缩小 {ratio} 倍）",
    # notebook 08's KV-cache plot
    "KV cache, {dtype}": "KV 缓存，{dtype}",
    "context length (tokens, batch 1)": "上下文长度（词元数，批大小 1）",
}


def language() -> str:
    """The learner's language, read at each call (so a notebook can set it): "zh" or "en"."""
    return settings.lang()


def t(text: str, lang: str | None = None, **fields) -> str:
    """`text` in `lang` (default: LABKIT_LANG's), English where STRINGS has no entry; `fields` fill a template."""
    out = STRINGS.get(text, text) if (lang or language()) == "zh" else text
    return out.format(**fields) if fields else out
