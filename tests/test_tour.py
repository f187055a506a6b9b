import pandas as pd
import pytest

from labkit import __main__ as cli


def test_tour_writes_the_table_and_plots(tmp_path, monkeypatch, baseline, capsys):
    monkeypatch.setattr(cli, "TECHNIQUES", ())  # the techniques have their own tests; this checks the job itself
    df = cli.tour(tmp_path)
    for name in ["summary.csv", "summary.md", "summary.png", "pareto.png"]:
        assert (tmp_path / name).stat().st_size > 0, name
    saved = pd.read_csv(tmp_path / "summary.csv").set_index("name")
    assert list(saved.index) == list(df["name"]) == ["fp32 baseline", "article: cast to float64"]
    assert saved["pareto"].tolist() == [True, False]
    assert saved.loc["fp32 baseline", "agreement"] == 1.0
    lo, acc, hi = saved.loc["fp32 baseline", ["accuracy_lo", "accuracy", "accuracy_hi"]]
    assert lo < acc < hi  # every accuracy carries its 95% interval
    assert 1.99 < 1 / saved.loc["article: cast to float64", "size_ratio"] <= 2.0
    assert "fp32 baseline" in (tmp_path / "summary.md").read_text()
    assert "fp32 baseline" in capsys.readouterr().out


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["tuor"])


def test_prepare_verifies_an_existing_baseline(baseline, capsys):
    record = cli.prepare()
    assert record["action"] == "verified"
    out = capsys.readouterr().out
    assert record["sha256"] in out and "LABKIT_CACHE=" in out
