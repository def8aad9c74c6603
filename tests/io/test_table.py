"""medmm.io.read_table: both orientations, three formats, gene groups, bad files -> medmm errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medmm.io import read_gene_groups, read_table
from medmm.io.errors import CorruptFileError, InconsistentDataError

GROUPS = {"tumor_suppressor": ["TP53", "PTEN", "RB1"], "oncogene": ["MYC", "KRAS", "ERBB2"]}


@pytest.fixture
def expression() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    genes = ["TP53", "PTEN", "RB1", "MYC", "KRAS", "ERBB2", "GAPDH"]
    samples = [f"CASE-{i:04d}" for i in range(5)]
    return pd.DataFrame(rng.normal(size=(5, 7)), index=pd.Index(samples, name="sample_id"), columns=genes)


def test_genes_x_samples_tsv_detected_from_header(tmp_path, expression):
    path = tmp_path / "expr.tsv"
    expression.T.rename_axis("Hugo_Symbol").to_csv(path, sep="\t")
    table = read_table(path)
    assert table.orientation == "features_x_samples"
    assert table.samples == list(expression.index)
    np.testing.assert_allclose(table.values.to_numpy(), expression.to_numpy(), rtol=1e-12)


def test_samples_x_genes_csv_and_parquet(tmp_path, expression):
    csv, pq = tmp_path / "expr.csv", tmp_path / "expr.parquet"
    expression.to_csv(csv)
    expression.reset_index().to_parquet(pq, index=False)
    for path in (csv, pq):
        table = read_table(path)
        assert table.orientation == "samples_x_features"
        pd.testing.assert_frame_equal(table.values, expression, check_names=False)


def test_orientation_from_gene_groups_or_declared(tmp_path, expression):
    path = tmp_path / "expr.csv"
    expression.T.rename_axis("id").to_csv(path)  # neutral header: only the groups can tell
    with pytest.raises(InconsistentDataError, match="orientation"):
        read_table(path)
    table = read_table(path, gene_groups=GROUPS)
    assert table.orientation == "features_x_samples" and table.values.shape == (5, 7)
    declared = read_table(path, orientation="features_x_samples")
    pd.testing.assert_frame_equal(declared.values, table.values)


def test_gene_group_files_csv_yaml_json(tmp_path, expression):
    long = tmp_path / "groups.csv"
    pd.DataFrame([(g, gene) for g, genes in GROUPS.items() for gene in genes], columns=["group", "gene"]).to_csv(
        long, index=False)
    (tmp_path / "groups.yaml").write_text(yaml.safe_dump(GROUPS))
    (tmp_path / "groups.json").write_text(json.dumps(GROUPS))
    for name in ("groups.csv", "groups.yaml", "groups.json"):
        assert read_gene_groups(tmp_path / name) == GROUPS
    path = tmp_path / "expr.csv"
    expression.drop(columns=["RB1"]).to_csv(path)
    table = read_table(path, gene_groups=long)
    assert table.groups["tumor_suppressor"] == ["TP53", "PTEN"]
    assert table.missing_genes == {"tumor_suppressor": ["RB1"]}
    np.testing.assert_allclose(table.group_matrix("oncogene"), expression[["MYC", "KRAS", "ERBB2"]].to_numpy(),
                               rtol=1e-6)
    with pytest.raises(InconsistentDataError, match="RB1"):
        read_table(path, gene_groups=GROUPS, allow_missing_genes=False)
    with pytest.raises(InconsistentDataError, match="none of its"):
        read_table(path, gene_groups={"empty": ["NOPE1", "NOPE2"]})


def test_clinical_table_keeps_mixed_columns(tmp_path):
    path = tmp_path / "clinical.tsv"
    pd.DataFrame({"case_id": ["A", "B"], "vital_status": ["Dead", "Alive"], "days_to_death": [100, None]}).to_csv(
        path, sep="\t", index=False)
    table = read_table(path, numeric=False)
    assert table.values.loc["A", "vital_status"] == "Dead"
    with pytest.raises(InconsistentDataError, match="vital_status"):
        read_table(path)  # numeric by default: the text column is named


@pytest.mark.parametrize("content, error, match", [
    (b"", CorruptFileError, "empty"),
    (b"sample_id,TP53\nA,1\nA,2\n", InconsistentDataError, "duplicated sample"),
    (b"sample_id,TP53,TP53\nA,1,2\n", InconsistentDataError, "duplicated feature name"),
    (b"sample_id,TP53\nA,\nB,\n", InconsistentDataError, "no value"),
    (b"sample_id,TP53\nA,inf\n", InconsistentDataError, "infinite"),
    (b"sample_id,TP53\n\"A,1\n", CorruptFileError, "not a readable"),
])
def test_bad_csv(tmp_path, content, error, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_bad_parquet_and_missing_file(tmp_path, expression):
    good = tmp_path / "good.parquet"
    expression.reset_index().to_parquet(good, index=False)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CorruptFileError, match="truncated.parquet"):
        read_table(truncated)
    with pytest.raises(CorruptFileError, match="not found"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(InconsistentDataError, match="group"):
        bad = tmp_path / "groups.csv"
        bad.write_text("name,symbol\na,TP53\n")
        read_gene_groups(bad)
