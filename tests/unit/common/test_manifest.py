from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest, verify_files


def test_commit_writes_manifest_with_required_fields(tmp_path):
    parent_file = tmp_path / "input.txt"
    parent_file.write_text("hello")
    with ArtifactWriter(
        tmp_path / "art",
        "thing",
        config={"a": 1},
        parents=[parent_ref(parent_file)],
        command=["pocketlm", "x"],
    ) as art:
        art.path("data/values.txt").write_text("42")
        out = art.commit({"answer": 42})
    m = read_manifest(out, kind="thing")
    assert m["kind"] == "thing" and m["schema"] == 1 and m["pocketlm_version"]
    assert m["config"] == {"a": 1} and m["command"] == ["pocketlm", "x"]
    assert (
        m["parents"][0]["sha256"]
        == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert m["summary"] == {"answer": 42} and m["created_at"]
    assert m["files"]["data/values.txt"]["bytes"] == 2
    assert not list(tmp_path.glob(".art.tmp-*"))


def test_crash_leaves_no_artifact_under_the_final_name(tmp_path):
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path / "art", "thing") as art:
        art.path("half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert not (tmp_path / "art").exists()
    assert not list(tmp_path.glob(".art.tmp-*"))


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    with ArtifactWriter(tmp_path / "art", "thing") as art:
        art.commit()
    with pytest.raises(ArtifactError, match="already exists.*--overwrite"):
        ArtifactWriter(tmp_path / "art", "thing")
    with ArtifactWriter(tmp_path / "art", "other", overwrite=True) as art:
        art.commit()
    assert read_manifest(tmp_path / "art")["kind"] == "other"


def test_read_manifest_errors_are_clear(tmp_path):
    with pytest.raises(ArtifactError, match="no such directory"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="not a PocketLM artifact"):
        read_manifest(tmp_path / "plain")
    (tmp_path / "plain" / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        read_manifest(tmp_path / "plain")
    (tmp_path / "plain" / "manifest.json").write_text(json.dumps({"kind": "tokens", "schema": 1}))
    with pytest.raises(ArtifactError, match="is a 'tokens' artifact, expected corpus"):
        read_manifest(tmp_path / "plain", kind="corpus")


def test_verify_files_detects_truncation_and_corruption(tmp_path):
    with ArtifactWriter(tmp_path / "art", "thing") as art:
        art.path("w.bin").write_bytes(b"x" * 100)
        out = art.commit()
    verify_files(out)
    (out / "w.bin").write_bytes(b"x" * 50)
    with pytest.raises(ArtifactError, match="truncated"):
        verify_files(out)
    (out / "w.bin").write_bytes(b"y" * 100)
    with pytest.raises(ArtifactError, match="sha256"):
        verify_files(out)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    field=st.sampled_from(
        ["kind", "schema", "files", "files.entry", "files.bytes", "files.sha256"]
    ),
    value=JSON_VALUES,
)
def test_any_value_in_a_manifest_field_reads_or_is_an_artifact_error(tmp_path, field, value):
    """read_manifest and verify_files on a manifest with any JSON in any field: the manifest reads
    (and verifies or names the bad file), or an ArtifactError names it; never another exception."""
    with ArtifactWriter(tmp_path / "art", "thing", overwrite=True) as art:
        art.path("w.bin").write_bytes(b"x" * 10)
        out = art.commit()
    manifest = json.loads((out / "manifest.json").read_text())
    if field.startswith("files."):
        if field == "files.entry":
            manifest["files"]["w.bin"] = value
        else:
            manifest["files"]["w.bin"][field.split(".")[1]] = value
    else:
        manifest[field] = value
    (out / "manifest.json").write_text(json.dumps(manifest))
    try:
        verify_files(out)
    except ArtifactError as exc:
        assert str(out) in str(exc)
    else:  # accepted: every value it used was well formed
        assert isinstance(manifest["kind"], str) and isinstance(manifest["schema"], int)
        for name, info in manifest["files"].items():
            assert info["bytes"] == (out / name).stat().st_size


def test_a_named_staging_directory_survives_a_crash_and_is_continued(tmp_path):
    with (
        pytest.raises(RuntimeError),
        ArtifactWriter(tmp_path / "art", "thing", staging=".st") as art,
    ):
        art.path("part.txt").write_text("first")
        raise RuntimeError("killed")
    assert (tmp_path / ".st" / "part.txt").read_text() == "first"  # kept for the re-run
    assert not (tmp_path / "art").exists()
    with ArtifactWriter(tmp_path / "art", "thing", staging=".st") as art:
        with art.path("part.txt").open("a") as fh:
            fh.write("+second")
        out = art.commit()
    assert (out / "part.txt").read_text() == "first+second"
    assert read_manifest(out)["files"]["part.txt"]["bytes"] == len("first+second")
    assert not (tmp_path / ".st").exists()
