"""The data fingerprint's own contract, on small folders (tests/pipeline/test_fingerprint.py
checks what a changed folder reruns in a pipeline; this file pins each part of the hash)."""

from __future__ import annotations

import os
import shutil

import pytest

from cskd.data import fingerprint as fp


@pytest.fixture(autouse=True)
def _fresh_cache():
    fp.forget()
    yield
    fp.forget()


def _tree(root, files: dict[str, bytes]):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_stat_entry_holds_the_relative_path_size_both_times_and_the_inode(tmp_path):
    path = _tree(tmp_path, {"a/1.png": b"12345"}) / "a" / "1.png"
    st = path.stat()
    assert fp._entry(path, "a/1.png", "stat") == \
        f"a/1.png\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode()
    assert fp._entry(tmp_path / "gone.png", "gone.png", "stat") == b"gone.png\0missing\n"


def test_a_content_entry_is_the_path_and_the_bytes_sha256(tmp_path):
    import hashlib

    path = _tree(tmp_path, {"x.png": b"abc"}) / "x.png"
    assert fp._entry(path, "x.png", "content") == f"x.png\0{hashlib.sha256(b'abc').hexdigest()}\n".encode()


def test_moving_a_file_to_another_class_folder_changes_the_fingerprint_even_by_content(tmp_path):
    root = _tree(tmp_path / "data", {"a/1.png": b"one", "b/2.png": b"two"})
    before = fp.folder_fingerprint(str(root), "content")
    shutil.move(root / "a" / "1.png", root / "b" / "1.png")  # a relabel: same bytes, same file name
    fp.forget()
    assert fp.folder_fingerprint(str(root), "content") != before


def test_content_mode_ignores_times_and_copies_but_sees_an_edit(tmp_path):
    root = _tree(tmp_path / "data", {"a/1.png": b"one", "b/2.png": b"two"})
    before = fp.folder_fingerprint(str(root), "content")
    os.utime(root / "a" / "1.png", (1, 1))
    copy = shutil.copytree(root, tmp_path / "copy")
    fp.forget()
    assert fp.folder_fingerprint(str(root), "content") == before == fp.folder_fingerprint(str(copy), "content")
    (root / "a" / "1.png").write_bytes(b"ONE")
    fp.forget()
    assert fp.folder_fingerprint(str(root), "content") != before


def test_stat_mode_sees_a_touch_a_copy_and_a_rewrite_of_the_same_bytes(tmp_path):
    root = _tree(tmp_path / "data", {"a/1.png": b"one"})
    seen = {fp.folder_fingerprint(str(root))}
    os.utime(root / "a" / "1.png", (5, 5))  # modification time
    fp.forget()
    seen.add(fp.folder_fingerprint(str(root)))
    stat = (root / "a" / "1.png").stat()
    (root / "a" / "1.png").write_bytes(b"one")  # same bytes, times set back: the inode change time moved
    os.utime(root / "a" / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fp.forget()
    seen.add(fp.folder_fingerprint(str(root)))
    assert len(seen) == 3
    copy = shutil.copytree(root, tmp_path / "copy", copy_function=shutil.copy2)  # new inodes
    assert fp.folder_fingerprint(str(copy)) not in seen


def test_fingerprints_are_cached_until_forget(tmp_path):
    root = _tree(tmp_path / "data", {"1.png": b"one"})
    before = fp.folder_fingerprint(str(root), "content")
    (root / "2.png").write_bytes(b"two")
    assert fp.folder_fingerprint(str(root), "content") == before  # the plan's view, read once
    fp.forget()
    assert fp.folder_fingerprint(str(root), "content") != before


def test_a_missing_folder_is_missing_and_subfolders_are_not_files(tmp_path):
    assert fp.folder_fingerprint(str(tmp_path / "nothing")) == "missing"
    root = _tree(tmp_path / "data", {"1.png": b"one"})
    before = fp.folder_fingerprint(str(root), "content")
    (root / "empty").mkdir()
    fp.forget()
    assert fp.folder_fingerprint(str(root), "content") == before


def test_files_fingerprint_covers_order_names_and_missing_files(tmp_path):
    _tree(tmp_path, {"a.tar": b"a", "b.tar": b"b"})
    a, b = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    ab = fp.files_fingerprint([a, b], "content")
    assert ab != fp.files_fingerprint([b, a], "content") and ab != fp.files_fingerprint([a], "content")
    assert fp.files_fingerprint([a, str(tmp_path / "c.tar")], "content") != fp.files_fingerprint([a], "content")


def test_image_folder_splits_the_test_fingerprint_covers_the_class_list(tmp_path):
    root = _tree(tmp_path / "data", {"train/cat/1.png": b"1", "train/dog/2.png": b"2",
                                     "test/cat/3.png": b"3", "test/dog/4.png": b"4"})
    train, test = fp.split_fingerprints("imagefolder", str(root), "content")
    assert train != test
    (root / "train" / "cat" / "5.png").write_bytes(b"5")  # a training image: the test split is unchanged
    fp.forget()
    train2, test2 = fp.split_fingerprints("imagefolder", str(root), "content")
    assert train2 != train and test2 == test
    (root / "train" / "bird").mkdir()  # a new class changes the labels of the test images
    (root / "train" / "bird" / "6.png").write_bytes(b"6")
    fp.forget()
    with_bird = fp.split_fingerprints("imagefolder", str(root), "content")[1]
    assert with_bird != test
    (root / "test" / "dog" / "4.png").write_bytes(b"four")  # a test image: the classes are the same
    fp.forget()
    train3, test3 = fp.split_fingerprints("imagefolder", str(root), "content")
    assert test3 != with_bird and train3 == fp.folder_fingerprint(str(root / "train"), "content")


def test_one_folder_for_both_splits_and_digits_by_version(tmp_path):
    import sklearn

    root = _tree(tmp_path / "fmnist", {"train.gz": b"x", "test.gz": b"y"})
    whole = fp.folder_fingerprint(str(root), "stat")
    assert fp.split_fingerprints("fashion-mnist", str(root)) == (whole, whole)
    assert fp.split_fingerprints("digits", None) == (f"sklearn-digits-{sklearn.__version__}",) * 2


def test_content_mode_reaches_every_split_a_touch_changes_nothing(tmp_path):
    """The mode is passed down to every part: in content mode a touch (new times, same bytes) of
    a test image, a shard or a fashion-mnist file leaves every fingerprint as it was."""
    from cskd.data.shards import CLASSES_FILE

    folder = _tree(tmp_path / "data", {"train/cat/1.png": b"1", "test/cat/2.png": b"2"})
    shards = _tree(tmp_path / "shards", {"train-0.tar": b"t0", "train-1.tar": b"t1", "test-0.tar": b"s0",
                                         CLASSES_FILE: b"cat\ndog\n"})
    whole = _tree(tmp_path / "fmnist", {"train.gz": b"x"})
    patterns = {"train_shards": str(shards / "train-{0..1}.tar"), "test_shards": str(shards / "test-0.tar")}
    before = (fp.split_fingerprints("imagefolder", str(folder), "content"),
              fp.split_fingerprints("webdataset", None, "content", **patterns),
              fp.split_fingerprints("fashion-mnist", str(whole), "content"))
    for path in [folder / "test/cat/2.png", folder / "train/cat/1.png", *shards.iterdir(), whole / "train.gz"]:
        os.utime(path, (7, 7))
    fp.forget()
    after = (fp.split_fingerprints("imagefolder", str(folder), "content"),
             fp.split_fingerprints("webdataset", None, "content", **patterns),
             fp.split_fingerprints("fashion-mnist", str(whole), "content"))
    assert after == before
    fp.forget()
    assert fp.split_fingerprints("webdataset", None, **patterns) != before[1]  # the default mode is stat


def test_webdataset_shards_each_split_and_the_class_list_beside_the_training_shards(tmp_path):
    from cskd.data.shards import CLASSES_FILE

    shards = _tree(tmp_path / "shards", {"train-0.tar": b"t0", "train-1.tar": b"t1", "test-0.tar": b"s0",
                                         CLASSES_FILE: b"cat\ndog\n"})
    patterns = {"train_shards": str(shards / "train-{0..1}.tar"), "test_shards": str(shards / "test-0.tar")}
    train, test = fp.split_fingerprints("webdataset", None, "content", **patterns)
    classes = str(shards / CLASSES_FILE)
    assert train == fp.files_fingerprint([str(shards / "train-0.tar"), str(shards / "train-1.tar"), classes],
                                         "content")
    assert test == fp.files_fingerprint([str(shards / "test-0.tar"), classes], "content")
    (shards / CLASSES_FILE).write_bytes(b"dog\ncat\n")  # relabelled: both splits change
    again = fp.split_fingerprints("webdataset", None, "content", **patterns)
    assert again[0] != train and again[1] != test
    (shards / "train-1.tar").write_bytes(b"T1")  # a training shard: the test split is unchanged
    assert fp.split_fingerprints("webdataset", None, "content", **patterns)[1] == again[1]
    nothing = fp.split_fingerprints("webdataset", None, "content")  # no shards named: nothing to read
    assert nothing[0] == nothing[1] != again[1]


def test_files_fingerprint_names_each_file_by_its_name(tmp_path):
    _tree(tmp_path, {"a.tar": b"same", "b.tar": b"same"})
    assert fp.files_fingerprint([str(tmp_path / "a.tar")], "content") != \
        fp.files_fingerprint([str(tmp_path / "b.tar")], "content")
    fp_a_stat = fp.files_fingerprint([str(tmp_path / "a.tar")])
    os.utime(tmp_path / "a.tar", (9, 9))
    assert fp.files_fingerprint([str(tmp_path / "a.tar")]) != fp_a_stat  # stat by default


def test_a_relative_root_is_the_working_folder(tmp_path, monkeypatch):
    _tree(tmp_path, {"x.gz": b"x"})
    monkeypatch.chdir(tmp_path)
    assert fp.split_fingerprints("fashion-mnist", None, "content")[0] == fp.folder_fingerprint(".", "content")
    assert fp.split_fingerprints("imagefolder", None, "content")[0] == "missing"  # no train/ here
