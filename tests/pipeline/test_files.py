"""Output folders and files (foundation/files.py): confinement to the working folder, the
marker that says a folder is ours, atomic replacement, never overwriting or following a link."""

from __future__ import annotations

import json
import os

import pytest

from foundation.errors import OutputError
from foundation.files import (
    EXPORT_MARKER,
    OUTPUT_MARKER,
    canonical_json,
    check_new_path,
    check_owned_files,
    check_replaceable,
    confined,
    copy_owned_files,
    latest_version,
    read_marker,
    replace_output_dir,
    write_new_file,
)


def test_canonical_json_is_sorted_compact_ascii_and_refuses_nan():
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"\\u00e9","b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_confined_accepts_a_subfolder_and_names_the_field_otherwise(tmp_path):
    assert confined("out/a", field="report.dir", base=tmp_path) == (tmp_path / "out" / "a").resolve()
    with pytest.raises(OutputError, match=r"report\.dir: '\.\./x' resolves to .*, outside"):
        confined("../x", field="report.dir", base=tmp_path)
    with pytest.raises(OutputError, match=r"ship\.dir: '\.' is the working directory itself"):
        confined(".", field="ship.dir", base=tmp_path)
    with pytest.raises(OutputError, match="outside"):
        confined("/etc", field="ship.dir", base=tmp_path)
    (tmp_path / "link").symlink_to(tmp_path.parent)  # text inside, target outside
    with pytest.raises(OutputError, match="no symlink that leaves it"):
        confined("link/out", field="ship.dir", base=tmp_path)


def test_confined_defaults_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert confined("a", field="f") == (tmp_path / "a").resolve()
    with pytest.raises(OutputError):
        confined("..", field="f")


def _ours(folder, **extra):
    folder.mkdir(parents=True)
    (folder / OUTPUT_MARKER).write_text(json.dumps({"made_by": "cskd-pipeline", **extra}))
    return folder


def test_read_marker_knows_only_folders_the_pipeline_made(tmp_path):
    assert read_marker(_ours(tmp_path / "a", run="r1")) == {"made_by": "cskd-pipeline", "run": "r1"}
    (tmp_path / "b").mkdir()
    assert read_marker(tmp_path / "b") is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / OUTPUT_MARKER).write_text(json.dumps({"made_by": "someone"}))
    assert read_marker(tmp_path / "c") is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / OUTPUT_MARKER).write_text("{not json")
    assert read_marker(tmp_path / "d") is None
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / OUTPUT_MARKER).symlink_to(tmp_path / "a" / OUTPUT_MARKER)
    assert read_marker(tmp_path / "e") is None
    (tmp_path / "f").symlink_to(tmp_path / "a")
    assert read_marker(tmp_path / "f") is None
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / OUTPUT_MARKER).write_text("[1]")
    assert read_marker(tmp_path / "g") is None


def test_a_folder_not_made_by_the_pipeline_is_never_replaced_nor_emptied(tmp_path):
    mine = tmp_path / "reports"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's notes")
    with pytest.raises(OutputError, match=r"report\.dir: .* was not made by cskd-pipeline"):
        replace_output_dir(mine, lambda d: (d / "r.json").write_text("{}"), marker={}, field="report.dir")
    assert (mine / "notes.txt").read_text() == "a user's notes" and not (mine / "r.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]  # no temporary folder left behind
    (tmp_path / "link").symlink_to(_ours(tmp_path / "real"))
    with pytest.raises(OutputError):
        check_replaceable(tmp_path / "link", field="report.dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        check_replaceable(tmp_path / "file", field="report.dir")
    check_replaceable(tmp_path / "absent", field="report.dir")
    check_replaceable(tmp_path / "real", field="report.dir")


def test_replacing_our_folder_swaps_it_whole_and_leaves_no_temporary_folder(tmp_path):
    final = tmp_path / "out" / "v1"
    replace_output_dir(final, lambda d: (d / "a.txt").write_text("first"), marker={"run": "r1"}, field="f")
    assert read_marker(final) == {"made_by": "cskd-pipeline", "run": "r1"}
    assert oct((final / "a.txt").stat().st_mode & 0o777) == "0o644"
    replace_output_dir(final, lambda d: (d / "b.txt").write_text("second"), marker={"run": "r2"}, field="f")
    assert sorted(p.name for p in final.iterdir()) == [OUTPUT_MARKER, "b.txt"] and read_marker(final)["run"] == "r2"
    assert sorted(p.name for p in final.parent.iterdir()) == ["v1"]

    def fail(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        replace_output_dir(final, fail, marker={}, field="f")
    assert (final / "b.txt").read_text() == "second"  # the old folder stands, nothing half-written
    assert sorted(p.name for p in final.parent.iterdir()) == ["v1"]


def test_latest_version_reads_the_link(tmp_path):
    assert latest_version(tmp_path) is None
    (tmp_path / "v3").mkdir()
    (tmp_path / "latest").symlink_to("v3/")
    assert latest_version(tmp_path) == "v3"


def test_a_new_file_is_never_written_through_a_link_or_over_anything(tmp_path):
    write_new_file(tmp_path / "a" / "m.yaml", "name: x\n", what="manifest")
    assert (tmp_path / "a" / "m.yaml").read_text() == "name: x\n"
    assert oct((tmp_path / "a" / "m.yaml").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(OutputError, match="already exists; it is not overwritten"):
        write_new_file(tmp_path / "a" / "m.yaml", "other", what="manifest")
    assert (tmp_path / "a" / "m.yaml").read_text() == "name: x\n"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_new_file(tmp_path / "dangling", "x", what="manifest")
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "dir-link").symlink_to(tmp_path / "a")
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_new_file(tmp_path / "dir-link" / "n.yaml", "x", what="manifest")
    (tmp_path / "gone").symlink_to(tmp_path / "missing-folder")
    with pytest.raises(OutputError, match="dangling symbolic link"):
        check_new_path(tmp_path / "gone" / "deep" / "n.yaml", what="manifest")
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_new_path(tmp_path / "plain" / "n.yaml", what="manifest")
    check_new_path(tmp_path / "new" / "deeper" / "n.yaml", what="manifest")
    assert not (tmp_path / "new").exists()  # a check writes nothing


def test_export_files_land_beside_the_users_and_replace_only_our_unchanged_ones(tmp_path):
    source = tmp_path / "src.onnx"
    source.write_bytes(b"model-1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    assert check_owned_files(out, ["m.onnx"]) == {}
    copy_owned_files(out, {"m.onnx": source})
    assert (out / "m.onnx").read_bytes() == b"model-1" and (out / "mine.txt").read_text() == "the user's"
    made = json.loads((out / EXPORT_MARKER).read_text())
    assert made["made_by"] == "cskd-pipeline" and set(made["files"]) == {"m.onnx"}
    source.write_bytes(b"model-2")
    copy_owned_files(out, {"m.onnx": source})  # ours and unchanged: replaced
    assert (out / "m.onnx").read_bytes() == b"model-2"
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_MARKER, "m.onnx", "mine.txt"])
    (out / "m.onnx").write_bytes(b"edited by hand")
    with pytest.raises(OutputError, match=r"m\.onnx: exists and was not written by `cskd-pipeline export`"):
        copy_owned_files(out, {"m.onnx": source})
    assert (out / "m.onnx").read_bytes() == b"edited by hand"
    with pytest.raises(OutputError, match=r"mine\.txt: exists"):
        copy_owned_files(out, {"mine.txt": source})
    (out / "sub").mkdir()
    with pytest.raises(OutputError, match="sub: exists"):
        check_owned_files(out, ["sub"])
    os.symlink(source, out / "l.onnx")
    with pytest.raises(OutputError, match=r"l\.onnx: exists"):
        check_owned_files(out, ["l.onnx"])
    (tmp_path / "out-link").symlink_to(out)
    with pytest.raises(OutputError, match="is a symbolic link"):
        check_owned_files(tmp_path / "out-link", ["m.onnx"])
    (out / EXPORT_MARKER).write_text("{broken")
    with pytest.raises(OutputError):  # an unreadable marker vouches for nothing
        check_owned_files(out, ["m.onnx"])
    fresh = tmp_path / "new" / "out"
    copy_owned_files(fresh, {"m.onnx": source})
    assert (fresh / "m.onnx").read_bytes() == b"model-2"


def test_deep_new_folders_are_made_and_a_foreign_export_marker_vouches_for_nothing(tmp_path):
    from cskd.checkpoint import sha256_file

    write_new_file(tmp_path / "a" / "b" / "c" / "m.yaml", "x", what="manifest")
    replace_output_dir(tmp_path / "r" / "s" / "t" / "v1", lambda d: None, marker={}, field="f")
    assert (tmp_path / "a" / "b" / "c" / "m.yaml").is_file() and read_marker(tmp_path / "r" / "s" / "t" / "v1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"someone's model")
    (out / EXPORT_MARKER).write_text(json.dumps({"made_by": "someone-else",
                                                 "files": {"m.onnx": sha256_file(out / "m.onnx")}}))
    with pytest.raises(OutputError, match=r"m\.onnx: exists"):
        check_owned_files(out, ["m.onnx"])
    written = copy_owned_files(tmp_path / "fresh", {"a.onnx": out / "m.onnx", "b.onnx": out / "m.onnx"})
    assert written == [tmp_path / "fresh" / "a.onnx", tmp_path / "fresh" / "b.onnx"]
    assert json.loads((tmp_path / "fresh" / EXPORT_MARKER).read_text())["files"] == {
        "a.onnx": sha256_file(out / "m.onnx"), "b.onnx": sha256_file(out / "m.onnx")}


def test_latest_version_is_the_last_part_of_the_link(tmp_path):
    (tmp_path / "sub" / "v7").mkdir(parents=True)
    (tmp_path / "latest").symlink_to("sub/v7/")
    assert latest_version(tmp_path) == "v7"


def test_writing_into_an_existing_folder_and_an_export_folder_under_a_file(tmp_path):
    write_new_file(tmp_path / "m.yaml", "x", what="manifest")  # the folder is there already
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(OutputError, match=r"plain: is a file, not a folder; choose another path for the export"):
        check_owned_files(tmp_path / "plain" / "out", ["m.onnx"])


def test_a_linked_export_marker_vouches_for_nothing(tmp_path):
    from cskd.checkpoint import sha256_file

    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"model")
    real = tmp_path / "marker.json"
    real.write_text(json.dumps({"made_by": "cskd-pipeline", "files": {"m.onnx": sha256_file(out / "m.onnx")}}))
    (out / EXPORT_MARKER).symlink_to(real)
    with pytest.raises(OutputError, match=r"exists and was not written"):
        check_owned_files(out, ["m.onnx"])


def test_a_link_made_between_the_check_and_the_write_is_not_followed(tmp_path, monkeypatch):
    """The race the exclusive open closes: a dangling link planted after check_new_path looked."""
    import foundation.files as files

    target = tmp_path / "victim.txt"

    def check_then_plant(path, *, what):
        path.symlink_to(target)

    monkeypatch.setattr(files, "check_new_path", check_then_plant)
    with pytest.raises(OutputError, match=r"planted\.yaml already exists; it is not overwritten"):
        files.write_new_file(tmp_path / "planted.yaml", "x", what="manifest")
    assert not target.exists()
