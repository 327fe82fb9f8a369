"""The benchmark record: JSON schema (keys present, types), the table, the plot file."""

from __future__ import annotations

import copy
import json

from ssmc.bench import report
from ssmc.bench.plot import plot


def test_record_follows_the_schema(tiny_doc):
    assert report.validate(tiny_doc) == []
    assert tiny_doc["schema"] == "ssmc-bench/1"
    assert [c["seqlen"] for c in tiny_doc["cases"]] == [8, 16]
    assert [i["name"] for i in tiny_doc["implementations"]] == ["ssmc", "eager", "assoc",
                                                                 "mamba_ssm"]
    for key in ("torch", "tvm", "triton", "ssmc", "python"):
        assert key in tiny_doc["versions"]
    assert isinstance(tiny_doc["device"]["cores"], int)
    assert isinstance(tiny_doc["device"]["cpu_model"], str)


def test_cases_hold_times_ratios_and_roofline(tiny_doc):
    for case in tiny_doc["cases"]:
        res = case["results"]
        assert res["ssmc"]["status"] == "ok" and res["eager"]["status"] == "ok"
        assert res["ssmc"]["median_s"] > 0
        assert len(res["ssmc"]["times_s"]) == res["ssmc"]["samples"]
        assert set(case["ratios"]) == {"eager", "assoc"}
        want = res["eager"]["median_s"] / res["ssmc"]["median_s"]
        assert abs(case["ratios"]["eager"] - want) < 1e-12
        roof = case["roofline"]
        assert roof["time_s"] > 0 and roof["bound"] in ("memory", "compute", "exp")
        assert abs(case["roofline_fraction"]["ssmc"]
                   - roof["time_s"] / res["ssmc"]["median_s"]) < 1e-12
        # a peer that cannot run here is skipped with its reason, never an error
        assert res["mamba_ssm"]["status"] == "skipped"
        assert "GPU" in res["mamba_ssm"]["message"]


def test_record_survives_json(tiny_doc, tmp_path):
    path = tmp_path / "b.json"
    report.write_json(tiny_doc, path)
    back = json.loads(path.read_text())
    assert report.validate(back) == []


def test_validate_names_what_is_wrong(tiny_doc):
    doc = copy.deepcopy(tiny_doc)
    del doc["versions"]
    assert report.validate(doc) == ["doc: missing 'versions'"]
    doc = copy.deepcopy(tiny_doc)
    doc["cases"][0]["results"]["ssmc"]["median_s"] = "fast"
    doc["cases"][1]["results"]["eager"] = {"status": "weird"}
    errs = report.validate(doc)
    assert any("cases[0].results.ssmc.median_s" in e for e in errs)
    assert any("cases[1].results.eager.status" in e for e in errs)


def test_table_lists_every_case_and_implementation(tiny_doc):
    text = report.format_table(tiny_doc)
    assert "ssd" in text and "roofline" in text
    for name in ("ssmc", "eager", "assoc", "mamba_ssm"):
        assert name in text
    assert "skipped" in text


def test_plot_writes_a_png(tiny_doc, tmp_path):
    path = tmp_path / "b.png"
    plot(tiny_doc, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_formatting_helpers():
    assert report.fmt_time(2.5) == "2.50 s"
    assert report.fmt_time(0.0125) == "12.50 ms"
    assert report.fmt_time(3e-6) == "3.0 us"
    assert report.fmt_time(None) == "-"
