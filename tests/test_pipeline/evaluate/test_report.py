"""Report rendering: the markdown table, a JSON that round-trips, and a real PNG."""

from __future__ import annotations

from neuronforge.pipeline.evaluate.report import (
    EvaluationReport,
    VariantResult,
    render_markdown,
    write_report,
)


def _variant(key: str, label: str, weights: str | None, ppl: float, **kw: object) -> VariantResult:
    return VariantResult(
        key=key,
        label=label,
        weights=weights,
        perplexity={"hamlet": ppl, "verne": ppl + 1},
        ppl_recovery={"hamlet": 100 * 20.0 / ppl, "verne": 100 * 21.0 / (ppl + 1)},
        kl=0.0 if weights is None else 0.012,
        agreement=1.0 if weights is None else 0.95,
        weight_bytes=270_000_000 if weights is None else 160_000_000,
        weight_percent=100.0 if weights is None else 59.3,
        **kw,
    )


def _report(**kw: object) -> EvaluationReport:
    return EvaluationReport(
        model="tiny",
        dtype="int8",
        kv="fp8",
        eval_tokens={"hamlet": 1024, "verne": 1024},
        settings={"seqlen": 256},
        variants=[
            _variant("bf16", "bf16 (reference)", None, 20.0, task_accuracy=0.5, task_recovery=100.0, instance=None),
            _variant(
                "rtn",
                "RTN int8",
                "int8",
                21.0,
                modules_to_not_convert=["lm_head"],
                task_accuracy=0.4,
                task_recovery=80.0,
                flags=["KL 2.000 nats > 0.25: variant looks broken"],
                instance="ml.inf2.xlarge",
                instance_tp=2,
                instance_usd_per_hour=0.7582,
            ),
        ],
        task="gsm8k.jsonl (10 problems)",
        command="neuronforge evaluate --model tiny",
        **kw,
    )


def test_markdown_table_has_every_variant_and_column():
    md = render_markdown(_report())
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, rule, two variants
    assert table[0].count("|") == table[2].count("|") == table[3].count("|")
    assert "ppl hamlet" in table[0] and "task acc" in table[0] and "% of bf16" in table[0]
    assert "| bf16 (reference) | 20.000 | 21.000 | 100.00 |" in table[2]
    assert "| 95.35 |" in table[3]  # (20/21 + 21/22) / 2 = 0.95346
    assert "lm_head" in table[3] and "160.00 MB" in table[3] and "80.0" in table[3]
    assert "smallest inf2 (tp, $/h)" in table[0]
    assert "| none fits |" in table[2] and "| inf2.xlarge (tp 2, $0.76) |" in table[3]
    assert "**WARNING RTN int8**" in md and "higher is better" in md
    assert "`neuronforge evaluate --model tiny`" in md


def test_an_autoround_variant_says_which_weights_the_whole_model_check_wrote():
    report = _report()

    def choice(kept: str) -> dict:
        figures = {"validation": {"kl": 0.0099}, "test": {"kl": 0.0101}}
        return {"autoround": figures, "rtn": {**figures, "validation": {"kl": 0.0094}}, "kept": kept}

    rtn_kept = _variant("autoround", "AutoRound int8", "int8", 21.0, autoround=True, autoround_vs_rtn=choice("rtn"))
    tuned_kept = _variant(
        "autoround_selective", "AutoRound int8 + selective", "int8", 21.0, autoround_vs_rtn=choice("autoround")
    )
    report.variants += [rtn_kept, tuned_kept]
    md = render_markdown(report)
    assert "- AutoRound int8: RTN's weights were written: the tuned model scored KL 0.00990 vs RTN's 0.00940" in md
    assert "- AutoRound int8 + selective: AutoRound's tuning was written: KL 0.00990 vs RTN's 0.00940" in md
    assert "- RTN int8:" not in md  # (no tuning, nothing decided)


def test_without_task_scores_the_task_columns_are_left_out():
    report = _report()
    for v in report.variants:
        v.task_accuracy = v.task_recovery = None
    header = next(line for line in render_markdown(report).splitlines() if line.startswith("| Variant"))
    assert "task acc" not in header and "ppl recovery %" in header


def test_write_report_outputs_round_trip(tmp_path):
    paths = write_report(_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.png"]
    assert paths["report.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["report.png"].stat().st_size > 5000
    back = EvaluationReport.model_validate_json(paths["report.json"].read_text())
    assert back == _report()
    assert back.variants[1].mean_ppl_recovery < back.variants[0].mean_ppl_recovery == 100.0
