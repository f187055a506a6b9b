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
    "4-bit g32 weights (embeddings fp32)": "4 比特 g32 权重（嵌入为 fp32）",
    "MB": "MB",
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
    "bits": "比特宽度",
    "bits (sim.)": "比特宽度（模拟）",
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
    "group size": "组大小",
    "method": "方法",
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
    "{bits} bits, max {max}, eps {eps}": "{bits} 比特，最大值 {max}，eps {eps}",
    "bits (sign | exponent: the range | mantissa: the precision)": "比特（符号 | 指数：范围 | 尾数：精度）",
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
    "{kept} of {total} word pieces survive": "{total} 个子词中保留了 {kept} 个",
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
    # the exercise harness (labkit.course.checks; the exercises' own texts are in i18n/zh/exercises/)
    "✅ {key}: correct.": "✅ {key}：正确。",
    "⏳ {key}: not attempted yet. {question}": "⏳ {key}：尚未作答。{question}",
    "❌ {key}: not yet. Hint: {hint}": "❌ {key}：还不对。提示：{hint}",
    "{hint} ({detail})": "{hint}（{detail}）",
    "your answer raised {error_type}: {error}. {hint}": "你的答案抛出了 {error_type}：{error}。{hint}",
    "⏳ {key}: no prediction yet. {question}": "⏳ {key}：还没有预测。{question}",
    "📝 {key}: you predict {amount}. Now run the measurement.": "📝 {key}：你的预测是 {amount}。现在运行测量。",
    "📏 {key}: measured {amount} (no prediction recorded: make one next time, before running).":
        "📏 {key}：测得 {amount}（没有记录预测：下次请在运行之前先做出预测）。",
    "📏 {key}: you predicted {guess}, measured {amount} ({ratio}).":
        "📏 {key}：你预测 {guess}，测得 {amount}（{ratio}）。",
    "{ratio} times your prediction": "是你预测值的 {ratio} 倍",
    "your prediction was 0": "你的预测为 0",
    "{key}: the {what} must be a number, got {type} ({value!r}).":
        "{key}：{what}必须是一个数，得到的是 {type}（{value!r}）。",
    "{key}: the {what} must be a finite number, got {number}.": "{key}：{what}必须是一个有限的数，得到的是 {number}。",
    "prediction": "预测",
    "measurement": "测量值",
    "using your {name} ({key}).": "使用你的 {name}（{key}）。",
    "using labkit's reference for {key} until yours passes its check.":
        "在你的答案通过检查之前，{key} 先使用 labkit 的参考实现。",
    "{key}: {what} is not shown in a graded release: this is a graded release, so the reference stays with your "
    "teacher. `checks.hint({quoted})` gives graduated hints, and `checks.check({quoted}, answer)` says what is wrong "
    "with yours.":
        "{key}：评分版本不显示{what}：参考答案由你的老师保管。`checks.hint({quoted})` 给出分级提示，"
        "`checks.check({quoted}, answer)` 会指出你的答案哪里不对。",
    "the reference answer": "参考答案",
    "labkit's reference (in place of an answer that does not pass its check yet)":
        "labkit 的参考实现（用来代替尚未通过检查的答案）",
    "💡 {key}: {body}": "💡 {key}：{body}",
    "💡 {key}, hint {level} of {total}, {stage}: {body}{more}": "💡 {key}，提示 {level}/{total}，{stage}：{body}{more}",
    " (run checks.hint({quoted}) again for {stage})": "（再运行一次 checks.hint({quoted})，可得到{stage}）",
    "the idea": "核心思想",
    "the step that usually goes wrong": "最容易出错的一步",
    "a smaller case, worked": "一个更小的算例（附解答）",
    # checks.progress()'s headers and kinds (the column names in code stay English)
    "exercise": "练习",
    "kind": "类型",
    "solved": "已完成",
    "question": "题目",
    "predicted": "预测值",
    "measured": "测量值",
    "code": "代码",
    "value": "数值",
    "design": "设计",
    # the generic hints (labkit.course.exercises.GENERIC_HINTS)
    "your function changed its input in place. Work on a copy (`x.clone()`) or use out-of-place operations "
    "(`x * mask`, not `x.mul_(mask)`): the caller's tensor must stay as it was.":
        "你的函数就地修改了它的输入。请在副本上操作（`x.clone()`），或使用非就地运算（用 `x * mask`，"
        "而不是 `x.mul_(mask)`）：调用者的张量必须保持原样。",
    "the answer is not of the kind asked for; read the question again (a number, a tuple, a function?).":
        "答案不是题目要求的类型；请再读一遍题目（要的是一个数、一个元组，还是一个函数？）。",
    # what a check adds about a mistake (Mistake details in labkit/course/exercises/nb*.py)
    "expected a function, got {type}": "需要一个函数，得到的是 {type}",
    "got {type}": "得到的是 {type}",
    "return a tensor": "请返回一个张量",
    "return a number, got {type}": "请返回一个数，得到的是 {type}",
    "return a tuple (multiply-adds, bytes)": "请返回一个元组（乘加次数，字节数）",
    "return a tuple (compute_seconds, memory_seconds)": "请返回一个元组 (compute_seconds, memory_seconds)",
    "answer with a name in quotes, got {type}": "请用带引号的名字作答，得到的是 {type}",
    "could not read {type} as an array": "无法把 {type} 读作数组",
    "return a tuple of three arrays: {names}": "请返回由三个数组组成的元组：{names}",
    "return a tuple of two arrays: (mask, values)": "请返回由两个数组组成的元组：(mask, values)",
    "return a pair (scale, zero_point)": "请返回一对值 (scale, zero_point)",
    "return a pair (codebook, indices)": "请返回一对值 (codebook, indices)",
    "a tuple of four shapes, e.g. ((6, 8), (6,), (8, 6), (8,))":
        "一个由四个形状组成的元组，例如 ((6, 8), (6,), (8, 6), (8,))",
    "a tuple of two layer numbers, e.g. (2, 4)": "一个由两个层号组成的元组，例如 (2, 4)",
    "return two tensors: (scale, zero_point)": "请返回两个张量：(scale, zero_point)",
    "DynamicInt8Linear(linear) must give a module, got {type}":
        "DynamicInt8Linear(linear) 必须给出一个模块，得到的是 {type}",
    "forward must return a tensor, got {type}": "forward 必须返回一个张量，得到的是 {type}",
    "return two tensors: (kept hidden states, kept indices)": "请返回两个张量：（保留的隐藏状态，保留的索引）",
    "expected a tuple (linear_macs, attention_macs), got {got!r}":
        "需要一个元组 (linear_macs, attention_macs)，得到的是 {got!r}",
    "the function returned {type}, not a model": "该函数返回的是 {type}，不是模型",
    "expected a list of (step, options) pairs, got {type}": "需要一个由 (step, options) 对组成的列表，得到的是 {type}",
    "validation accuracy {mine} vs fp32 {fp32:.3f}{note}": "验证集准确率 {mine}，fp32 为 {fp32:.3f}{note}",
    "validation accuracy {mine} vs fp32 {fp32:.3f}{note}; {speedup:.2f}x at batch 32 (per round {range})":
        "验证集准确率 {mine}，fp32 为 {fp32:.3f}{note}；批大小 32 时快 {speedup:.2f} 倍（各轮 {range}）",
    " (fast mode: a 300-snippet subset, where 1 point is 3 snippets)":
        "（快速模式：300 个片段的子集，1 个百分点即 3 个片段）",
    "return a tuple (q, corrected rest) of two tensors": "请返回由两个张量组成的元组 (q, 修正后的其余列)",
    "return a tuple (scales, alpha)": "请返回一个元组 (scales, alpha)",
    "alpha is one number": "alpha 是一个数",
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
