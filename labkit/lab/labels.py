"""labkit's labels in the learner's language: `t(text)` gives a widget's, plot's or readout's English text in the
language LABKIT_LANG names, read at each call ("zh": Chinese from the one table STRINGS; anything else, or a text
the table lacks, English). A Chinese notebook's first cell sets LABKIT_LANG=zh (labkit.course.i18n builds those notebooks).
`translated(text)` does the same for a text already written out, such as a figure's title that an f-string filled in.
"""

from __future__ import annotations

import functools
import re
import string

from labkit.core import settings

# Every label labkit shows that has a Chinese form, keyed by its English. Texts with {fields} are templates
# (t(text, field=...) fills them). A label missing here is shown in English: nothing breaks.
STRINGS: dict[str, str] = {
    # labels written in notebook code (titles, axes, legends, widget descriptions, printed verdicts); a figure's texts
    # go through this table when it is shown (labkit.lab.plots.translate_figures), f-strings through their template
    "arithmetic intensity (multiply-adds per byte)": "算术强度（每字节的乘加次数）",
    "GMAC/s": "GMAC/s",
    "{device} roof ({peak} GMAC/s)": "{device} 屋顶（{peak} GMAC/s）",
    "{rows}x{cols} float32: bytes per format": "{rows}x{cols} float32：各格式的字节数",
    "bytes": "字节数",
    "density": "密度",
    "ms": "毫秒",
    "layer magnitude": "逐层幅值",
    "global magnitude": "全局幅值",
    "layer random": "逐层随机",
    "accuracy, 95% interval (validation)": "准确率，95% 置信区间（验证集）",
    "k": "k",
    "weight value (orange: the 3-bit grid)": "权重值（橙色：3 比特网格）",
    "bits per weight": "每个权重的比特数",
    "accuracy ({n} validation snippets, 95% interval)": "准确率（{n} 个验证集片段，95% 置信区间）",
    "inputs of block 0's feed-forward down layer": "第 0 块前馈下投影层的输入",
    "{observer}: [{lo}, {hi}]": "{observer}: [{lo}, {hi}]",
    "the whole batch's range": "整个批次的范围",
    "range of each token's input to the query layer": "每个词元输入 query 层的范围",
    "tokens": "词元数",
    "agreement with fp32": "与 fp32 的一致率",
    "position in the padded batch": "在填充后批次中的位置",
    "snippet": "片段",
    "black: kept from block 2 on · grey: dropped · white: padding": "黑色：从第 2 块起保留 · 灰色：丢弃 · 白色：填充",
    "unpruned": "未剪枝",
    "keep 0.5 from block 2": "从第 2 块起保留 0.5",
    "block": "块",
    "GFLOPs for these {n} snippets": "这 {n} 个片段的 GFLOPs",
    "green: the {kept} of {total} word pieces kept from block 2 on": "绿色：从第 2 块起保留的子词（{total} 个中的 {kept} 个）",
    "accuracy, 95% interval (quick validation subset)": "准确率，95% 置信区间（验证集快速子集）",
    "speed-up at batch 32 (timed beside the unpruned model)": "批大小 32 时的加速比（与未剪枝模型并排计时）",
    "your cubic schedule": "你的立方调度",
    "straight line, for comparison": "直线，作对比",
    "fine-tune step": "微调步数",
    "target sparsity": "目标稀疏度",
    "to 70% sparsity": "升至 70% 稀疏度",
    "batch-32 latency, ms (median)": "批大小 32 的延迟，毫秒（中位数）",
    "validation accuracy, 95% interval": "验证集准确率，95% 置信区间",
    "batch size": "批大小",
    "snippets / s": "片段数 / 秒",
    "{threads} thread(s)": "{threads} 个线程",
    "the 16 levels of its 4-bit grid": "它的 4 比特网格的 16 个量化级（level）",
    "its 32 weights": "它的 32 个权重",
    "weight": "权重",
    "mean |x| of each input channel of {layer}": "{layer} 每个输入通道的平均 |x|",
    "AWQ's scales s = mean|x|^{alpha}, centred on 1": "AWQ 的缩放因子 s = mean|x|^{alpha}，以 1 为中心",
    "input channel": "输入通道",
    "method": "方法",
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
    # notebook 08's KV-cache plot (plots.kv_cache)
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


# A filled template is recognised by the template's own words; one of fewer letters than this ("{mb} MB",
# "{speedup}x {spread}") would also match texts it was never written for.
MIN_TEMPLATE_WORDS = 5


@functools.lru_cache(maxsize=1)
def _templates(keys: tuple[str, ...]) -> list[tuple[re.Pattern, str]]:
    """(pattern matching a filled-in template, its key) for each template in STRINGS, the most specific first."""
    out = []
    for key in keys:
        parts = list(string.Formatter().parse(key))
        words = "".join(literal for literal, *_ in parts)
        if not any(field for _, field, *_ in parts) or len(words.replace(" ", "")) < MIN_TEMPLATE_WORDS:
            continue
        seen, pattern = set(), ""
        for literal, field, *_ in parts:
            pattern += re.escape(literal)
            if field is not None:
                pattern += f"(?P={field})" if field in seen else f"(?P<{field}>.+?)"
                seen.add(field)
        out.append((len(words), re.compile(pattern, re.DOTALL), key))
    return [(pattern, key) for _, pattern, key in sorted(out, key=lambda x: -x[0])]


def translated(text: str, lang: str | None = None) -> str:
    """A text already written out in English (a figure's title, an f-string's value) in `lang` (default:
    LABKIT_LANG's): its STRINGS entry, or the entry of the template it fills, its fields kept as written."""
    if (lang or language()) != "zh" or not text:
        return text
    if text in STRINGS:
        return STRINGS[text]
    for pattern, key in _templates(tuple(STRINGS)):
        found = pattern.fullmatch(text)
        if found:
            return STRINGS[key].format(**found.groupdict())
    return text
