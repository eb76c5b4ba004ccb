"""Local file storage: safe keys only, whole-or-nothing writes, reads and deletes."""

import os
import time
from pathlib import Path

import pytest

from errands.core.storage import InvalidKey, LocalStorage, StoredFileMissing, check_key


async def read_all(storage: LocalStorage, key: str) -> bytes:
    return b"".join([chunk async for chunk in await storage.read(key)])


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "uploads/../../etc/passwd",
        "/etc/passwd",
        "uploads//a.png",
        "uploads/./a.png",
        ".partial/x",
        "uploads/a.png/",
        "uploads\\..\\a.png",
        "uploads/%2e%2e/a.png",
        "uploads/a b.png",
        "",
        "a" * 600,
    ],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


def test_ordinary_keys_are_accepted() -> None:
    key = "uploads/0b4e7c1e-1f7e-4f43-9d0b-3c1f2d7e8a90/page-0001.png"
    assert check_key(key) == key


async def test_a_write_appears_only_when_committed(tmp_path: Path) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    writer = await storage.open_write("uploads/u1/original.png")
    await writer.write(b"first ")
    await writer.write(b"second")
    assert not (tmp_path / "files" / "uploads" / "u1" / "original.png").exists()
    await writer.commit()
    assert writer.bytes_written == 12
    assert await read_all(storage, "uploads/u1/original.png") == b"first second"
    assert list((tmp_path / "files" / ".partial").iterdir()) == []


async def test_a_discarded_write_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    writer = await storage.open_write("uploads/u1/original.png")
    await writer.write(b"half a file")
    await writer.discard()
    with pytest.raises(StoredFileMissing):
        await storage.read("uploads/u1/original.png")
    assert list((tmp_path / "files" / ".partial").iterdir()) == []


async def test_put_file_takes_a_local_file_over(tmp_path: Path) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    source = tmp_path / "page.png"
    source.write_bytes(b"png bytes")
    await storage.put_file("uploads/u1/page-0001.png", source)
    assert not source.exists()
    async with storage.local_copy("uploads/u1/page-0001.png") as path:
        assert path.read_bytes() == b"png bytes"


async def test_delete_removes_the_file_and_its_emptied_folders(tmp_path: Path) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    for key in ("uploads/u1/f1/a.png", "uploads/u1/f2/b.png"):
        writer = await storage.open_write(key)
        await writer.commit()
    await storage.delete("uploads/u1/f1/a.png")
    assert not (tmp_path / "files" / "uploads" / "u1" / "f1").exists()
    assert await read_all(storage, "uploads/u1/f2/b.png") == b""
    await storage.delete("uploads/u1/f1/a.png")  # already gone: no error


async def test_a_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key.txt").write_text("secret")
    (tmp_path / "files" / "link").symlink_to(outside)
    # Not ours, so not there: the same answer as for any key that holds no file.
    with pytest.raises(StoredFileMissing):
        await storage.read("link/key.txt")
    with pytest.raises(StoredFileMissing):
        async with storage.local_copy("link/key.txt"):
            pass


async def test_a_stored_file_replaced_by_a_symlink_out_of_the_root_is_missing(
    tmp_path: Path,
) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    writer = await storage.open_write("uploads/u1/original.png")
    await writer.commit()
    stored = tmp_path / "files" / "uploads" / "u1" / "original.png"
    stored.unlink()
    (tmp_path / "secret.txt").write_text("secret")
    stored.symlink_to(tmp_path / "secret.txt")
    with pytest.raises(StoredFileMissing):
        await storage.read("uploads/u1/original.png")


async def test_a_sweep_removes_abandoned_partial_files_but_never_a_live_write(
    tmp_path: Path,
) -> None:
    storage = LocalStorage.under_data_dir(tmp_path)
    partials = tmp_path / "files" / ".partial"
    live = await storage.open_write("uploads/u1/original.png")
    await live.write(b"still arriving")
    abandoned = partials / "left-by-a-killed-process"
    abandoned.write_bytes(b"half a file")
    long_ago = time.time() - 3600
    for path in partials.iterdir():
        os.utime(path, (long_ago, long_ago))  # both look old: only the lock tells them apart

    assert await storage.sweep_abandoned_writes(older_than_s=60) == 1
    assert not abandoned.exists()
    await live.write(b", and done")
    await live.commit()
    assert await read_all(storage, "uploads/u1/original.png") == b"still arriving, and done"

    young = partials / "just-written"
    young.write_bytes(b"x")
    assert await storage.sweep_abandoned_writes(older_than_s=60) == 0
    assert young.exists()
