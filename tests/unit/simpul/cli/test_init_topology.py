"""`simpul init <kode wilayah>` writes a working topology from Kemendagri's shipped code list."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from simpul.cli.init import build_topology, office_codes, render
from simpul.cli.main import app
from simpul.settings import get_settings
from simpul.topology.model import load_topology, parse_topology
from simpul.wilayah import DATA_FILE, EDITION, UnknownRegion, Village, build, parse_sql, regency
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """The CLI caches its settings per process; these tests set SIMPUL_* for each invocation."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# Official counts per Kepmendagri No. 300.2.2-2430 Tahun 2025 (Kode dan Data Wilayah
# Administrasi Pemerintahan), lampiran for each province, as published in
# github.com/cahyadsn/wilayah db/wilayah.sql; they agree with the cities' own figures
# (Kota Kupang: 6 kecamatan, 51 kelurahan — the 51 kelurahan of its Soda Molek service;
# Kota Batu: 3 kecamatan, 5 kelurahan and 19 desa; Kota Yogyakarta: 14 kemantren, 45 kelurahan).
OFFICIAL = {
    # code: (name, kecamatan, kelurahan, desa)
    "72.71": ("Kota Palu", 8, 46, 0),
    "53.71": ("Kota Kupang", 6, 51, 0),
    "35.73": ("Kota Malang", 5, 57, 0),
    "35.79": ("Kota Batu", 3, 5, 19),
    "34.71": ("Kota Yogyakarta", 14, 45, 0),
}


@pytest.mark.parametrize("code", sorted(OFFICIAL))
def test_shipped_list_has_the_official_counts_of_kelurahan_and_desa(code: str) -> None:
    name, districts, kelurahan, desa = OFFICIAL[code]
    region = regency(code)
    assert region.name == name
    assert (len(region.districts), len(region.kelurahan), len(region.desa)) == (
        districts,
        kelurahan,
        desa,
    )
    assert all(
        len(v.code) == 10 and v.code.startswith(code.replace(".", "")) for v in region.villages
    )


@pytest.mark.parametrize("code", sorted(OFFICIAL))
def test_init_writes_a_topology_with_one_office_per_kelurahan_and_desa(code: str) -> None:
    name, _, kelurahan, desa = OFFICIAL[code]
    data = build_topology(code)
    topology = parse_topology(yaml.safe_load(render(data)), code)
    assert topology.city == name
    assert len(topology.kelurahan) == kelurahan + desa
    offices = [a for a in topology.agencies if a.kelurahan_code]
    assert sorted(a.kelurahan_code for a in offices) == sorted(k.code for k in topology.kelurahan)
    assert {"bkpsdm", "dpmptsp", "dinsos", "dukcapil", "bkd", "kominfo"} <= {
        a.code for a in topology.agencies
    }
    documents = topology.event_type("kelurahan.document.issued")
    assert all(documents.may_produce(a.code) for a in offices)
    assert len(topology.joins) == 3 and topology.subscriptions
    assert len(topology.connectors) == 2 + len(offices)
    assert all(a.cadence == "30d" for a in offices)


def test_palu_from_the_list_matches_the_hand_written_palu_topology() -> None:
    shipped = load_topology(REPO_ROOT / "topology" / "palu.yaml")
    generated = parse_topology(yaml.safe_load(render(build_topology("7271"))), "7271")
    assert [(k.code, k.name, k.district) for k in generated.kelurahan] == [
        (k.code, k.name, k.district) for k in shipped.kelurahan
    ]


def test_known_palu_codes_are_in_the_list() -> None:
    palu = {v.code: v for v in regency("7271").villages}
    assert palu["7271011004"].name == "Besusu Barat"
    assert palu["7271011004"].district == "Palu Timur"
    assert palu["7271021002"].district == "Palu Barat"


def test_batu_has_desa_offices() -> None:
    topology = parse_topology(yaml.safe_load(render(build_topology("35.79"))), "35.79")
    desa = [a for a in topology.agencies if a.code.startswith("desa-")]
    assert len(desa) == 19
    assert all(a.name.startswith("Kantor Desa ") for a in desa)
    assert "desa-*" in topology.event_type("kelurahan.document.issued").producers


def test_a_kabupaten_with_villages_of_the_same_name_gets_unique_office_codes() -> None:
    villages = [
        Village("3201012001", "Sukamaju", "320101", "Cibinong"),
        Village("3201022005", "Sukamaju", "320102", "Gunung Putri"),
        Village("3201031001", "Pakansari " + "Panjang " * 6, "320103", "Cibinong"),
    ]
    codes = office_codes(villages)
    assert codes["3201012001"] == "desa-sukamaju-012001"
    assert codes["3201022005"] == "desa-sukamaju-022005"
    assert len(codes["3201031001"]) <= 41 and codes["3201031001"].endswith("-031001")
    # The whole of Kabupaten Bogor (416 desa, 19 kelurahan) validates.
    bogor = parse_topology(yaml.safe_load(render(build_topology("3201"))), "3201")
    assert len(bogor.kelurahan) == 435


@pytest.mark.parametrize("bad", ["72", "72.71.01", "abcd", ""])
def test_a_malformed_code_is_refused_with_the_expected_shape(bad: str) -> None:
    with pytest.raises(UnknownRegion, match=r"expected a kabupaten/kota code such as 72\.71"):
        regency(bad)


def test_an_unknown_code_names_the_edition() -> None:
    with pytest.raises(UnknownRegion, match=re.escape(EDITION)):
        regency("94.71")


def test_converter_reads_the_sql_dump_and_writes_sorted_gzip_csv(tmp_path: Path) -> None:
    sql = (
        "INSERT INTO wilayah (kode, nama)\nVALUES\n('72.71','Kota Palu'),\n"
        "('72.71.01.1004','Besusu Barat'),\n('72.71.01','Palu Timur'),\n"
        "('73.22.01.2001','Ma''rang');\n"
    )
    assert list(parse_sql(sql))[-1] == ("73.22.01.2001", "Ma'rang")
    (tmp_path / "w.sql").write_text(sql)
    assert build(tmp_path / "w.sql", tmp_path / "w.csv.gz") == 4
    lines = gzip.decompress((tmp_path / "w.csv.gz").read_bytes()).decode().splitlines()
    assert lines == [
        "kode,nama",
        "72.71,Kota Palu",
        "72.71.01,Palu Timur",
        "72.71.01.1004,Besusu Barat",
        "73.22.01.2001,Ma'rang",
    ]


def test_shipped_data_has_its_source_and_edition() -> None:
    readme = (DATA_FILE.parent / "README.md").read_text()
    assert "cahyadsn/wilayah" in readme and "300.2.2-2430" in readme
    assert DATA_FILE.stat().st_size < 1_000_000


def test_cli_init_writes_a_file_that_topology_check_accepts(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"SIMPUL_CONNECTORS_DIR": str(tmp_path / "none")}
    out = tmp_path / "kupang.yaml"
    result = runner.invoke(app, ["init", "53.71", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "51 kelurahan/desa" in result.output
    assert out.read_text().startswith("# Kota Kupang (Nusa Tenggara Timur, regency code 53.71)")
    check = runner.invoke(app, ["topology", "check", str(out)], env=env)
    assert check.exit_code == 0, check.output
    assert "51 kelurahan" in check.output
    again = runner.invoke(app, ["init", "53.71", "--out", str(out)], env=env)
    assert again.exit_code == 1 and "--force" in again.output
    unknown = runner.invoke(app, ["init", "99.99", "--out", str(tmp_path / "x.yaml")], env=env)
    assert unknown.exit_code == 2 and "no kabupaten/kota 99.99" in unknown.output


@pytest.mark.parametrize(
    ("code", "zone"),
    [("72.71", "Asia/Makassar"), ("53.71", "Asia/Makassar"), ("35.79", "Asia/Jakarta"),
     ("34.71", "Asia/Jakarta"), ("91.71", "Asia/Jayapura"), ("8171", "Asia/Jayapura")],
)  # fmt: skip
def test_each_city_has_its_time_zone(code: str, zone: str) -> None:
    from simpul.wilayah import timezone_for

    assert timezone_for(code) == zone
