"""The built-in formats are shipped format specs (distill/formats/*.yaml): on every real file in
../shared/data they must give exactly the items the hand-written loaders gave before them.

The expected (count, items_digest) pairs were measured with the hand-written loaders of commit
4d3177b (distill/data/loaders.py before the specs replaced them); the digest covers every field
of every item (distill.data.loaders.items_digest), so any change in what is read fails here.
"""

from __future__ import annotations

import pytest

from distill.data.loaders import detect_format_name, items_digest, load_items
from distill.data.specs import shipped_specs

BEFORE_SPECS = {
    "competition/cleaned_category_labeled_train.cp949.csv": (
        "competition",
        2003,
        "57372e1c8a944544a06f74288573490bf4fac918731afd52cf2972b349347cbf",
    ),
    "competition/test.csv": ("competition", 869, "a60e859ee53fdb0dec3c2381f95729b33e8b2ab9e506c992c092b405d5a4cfaa"),
    "kice/2015_11_KICE.json": ("kice", 45, "e94f221e8cf5bb83b77052c984f88dadc4a0a704f9a4f6863011d8919452f35f"),
    "kice/2016_11_KICE.json": ("kice", 45, "b4560206e62617d11242a98eacb5dd72fad1f2e06247185b0dfe443abaefb8ee"),
    "kice/2017_11_KICE.json": ("kice", 45, "772c1ef164b80b882e00ed1324829dd493194adf865d786299760dc90b64d18f"),
    "kice/2018_11_KICE.json": ("kice", 45, "a8e57d4d8e868435b30c69b9dbc2307e1c940dc5ee671a2d0b27ff982a13ed95"),
    "kice/2019_11_KICE.json": ("kice", 45, "05e1251b25d01fd5487c71fb6928c5a5682cea980a37c4252357c90bdadad515"),
}


def test_every_real_file_is_covered(shared_data):
    real = {str(p.relative_to(shared_data)) for p in shared_data.rglob("*") if p.suffix in (".csv", ".json", ".jsonl")}
    assert real == set(BEFORE_SPECS)


@pytest.mark.parametrize("name", sorted(BEFORE_SPECS))
def test_shipped_spec_gives_the_items_of_the_hand_written_loader(shared_data, name):
    fmt, count, digest = BEFORE_SPECS[name]
    path = shared_data / name
    by_name = load_items(path, fmt, allow_duplicate_choices=True)
    assert (len(by_name), items_digest(by_name)) == (count, digest)
    by_file = load_items(path, str(shipped_specs()[fmt]), allow_duplicate_choices=True)
    assert items_digest(by_file) == digest
    assert detect_format_name(path) == fmt
    assert items_digest(load_items(path, "auto", allow_duplicate_choices=True)) == digest


def test_real_folder_of_kice_files_reads_as_one_dataset(shared_data):
    """A folder (or glob) reads every file; ids carry the file stem, so they stay unique."""
    items = load_items(shared_data / "kice", "kice")
    per_file = [load_items(shared_data / name, "kice") for name in sorted(BEFORE_SPECS) if name.startswith("kice/")]
    assert [item.to_dict() for item in items] == [item.to_dict() for part in per_file for item in part]
    assert items_digest(load_items(shared_data / "kice" / "*_KICE.json", "kice")) == items_digest(items)
