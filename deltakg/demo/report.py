"""The demo report as text: the KG table, the edit table, the LLM rows and the k-NN rows."""

from __future__ import annotations

from typing import Any

__all__ = ["format_report"]


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _kg_table(report: dict[str, Any]) -> list[str]:
    ours, pk = report["kg"], report["pykeen"]
    lines = [f"KG completion on {report['dataset'].upper()} (test, filtered, realistic ranks, both sides)",
             "| model | training | MRR | Hits@1 | Hits@3 | Hits@10 |", "|---|---|---|---|---|---|"]
    for name, row, budget in (
            (f"deltakg ({ours['layout']})", ours, f"{ours['epochs']} epochs, {ours['train_s']:.0f} s"),
            (pk["model"], pk, f"{pk['epochs']} epochs, {pk['train_s']:.0f} s (same wall clock)")):
        t = row["test"]
        lines.append(f"| {name} | {budget} | {t['mrr']:.3f} | {t['hits@1']:.3f} | {t['hits@3']:.3f} | "
                     f"{t['hits@10']:.3f} |")
    return lines


def _edit_table(report: dict[str, Any]) -> list[str]:
    es, ed = report["editset"], report["edits"]
    cases = es["edit_cases"]
    lines = [f"{es['name']}: {cases['train']}/{cases['dev']}/{cases['test']} edit cases (train/dev/test); "
             f"{ed['test_cases']} test edits, batch {ed['batch_size']}, RK on {ed['rk_facts']}, settings tuned on "
             f"{ed['tuned_on']}", ed["table"]]
    finals: dict[str, dict[str, Any]] = {}
    for point in ed["sequential"]:
        finals[point["method"]] = point
    if finals:
        lines.append("sequential editing, after the last edit: " + "; ".join(
            f"{m} Succ@1 {p['succ@1']:.2f} RK@3 {p['rk@3']:.2f}" for m, p in finals.items())
            + f" ({next(iter(finals.values()))['edits']} edits)")
    lines.append("plots: " + ", ".join(ed["plots"]))
    return lines


def _llm_table(report: dict[str, Any]) -> list[str]:
    llm = report["llm"]
    toy = llm["toy"]
    lines = [f"LLM editing: a GPT-2 of {toy['parameters']:,} parameters ({toy['n_layer']} layers) trained on "
             f"{llm['facts']} single-answer UMLS facts in {toy['train_s']:.0f} s (reproduces {toy['reproduced']:.2f}); "
             f"{llm['edits']} edits",
             "| method | reliability | generalization | locality | exact match | time/edit (s) |",
             "|---|---|---|---|---|---|"]
    pre = llm["rows"][0]["pre"]
    lines.append(f"| (before editing) | {_fmt(pre['reliability'])} | {_fmt(pre['generalization'])} | "
                 f"{_fmt(pre['locality'])} | {_fmt(pre['exact_match'])} | - |")
    for r in llm["rows"]:
        lines.append(f"| {r['method']} | {_fmt(r['reliability'])} | {_fmt(r['generalization'])} | "
                     f"{_fmt(r['locality'])} | {_fmt(r['exact_match'])} | {r['time_per_edit_s']:.4f} |")
    lines.append(f"plot: {llm['plot']}")
    return lines


def _knn_rows(report: dict[str, Any]) -> list[str]:
    lines = ["k-NN"]
    for row in report["knn"]["rows"]:
        if "model_alone" in row:
            alone = row["model_alone"]
            lines.append(f"  {row['row']}: MRR {row['mrr']:.3f} (model alone {alone['mrr']:.3f}), Hits@10 "
                         f"{row['hits@10']:.3f} ({alone['hits@10']:.3f}); k {row['k']}, lambda {row['lambda']}, "
                         f"{row['store_entries']:,} training queries in the store")
        else:
            lines.append(f"  {row['row']}: Succ@1 {row['succ@1']:.3f}, RK@3 {row['rk@3']:.3f}, "
                         f"{row['time_per_edit_s']:.4f} s/edit")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The text ``deltakg demo`` prints (the same numbers as the JSON report)."""
    stages = ", ".join(f"{name} {t['seconds']:.0f} s{' (reused)' if t['reused'] else ''}"
                       for name, t in report["stages"].items())
    parts = [_kg_table(report), _edit_table(report), _llm_table(report), _knn_rows(report),
             [f"stages: {stages}; total {report['seconds']:.0f} s"]]
    return "\n\n".join("\n".join(p) for p in parts)
