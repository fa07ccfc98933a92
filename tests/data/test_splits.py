from collections import Counter

import pytest

from dagman_components.data.splits import kfold_split, subset_fraction


def cases(n_pos=12, n_neg=24, patients=None):
    items = [{"image": f"c{i}.nii.gz", "label": int(i < n_pos)} for i in range(n_pos + n_neg)]
    if patients:
        for i, item in enumerate(items):
            item["patient"] = f"p{i % patients}"
    return items


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_subset_keeps_class_balance_and_is_seeded(fraction):
    items = cases()
    subset = subset_fraction(items, fraction, seed=1)
    counts = Counter(item["label"] for item in subset)
    assert counts == {1: round(12 * fraction), 0: round(24 * fraction)}
    assert subset == subset_fraction(items, fraction, seed=1)
    assert subset != subset_fraction(items, fraction, seed=2)
    assert subset_fraction(items, 1.0) == items


def test_subset_rejects_bad_fraction_and_names_missing_key():
    with pytest.raises(ValueError, match="fraction"):
        subset_fraction(cases(), 0.0)
    with pytest.raises(KeyError, match="'malignant'"):
        subset_fraction(cases(), 0.5, stratify_key="malignant")


def test_folds_partition_the_data_stratified():
    items = cases()
    seen = []
    for fold in range(3):
        train, val = kfold_split(items, num_folds=3, fold=fold, seed=0)
        assert len(train) + len(val) == len(items)
        assert not {i["image"] for i in train} & {i["image"] for i in val}
        assert Counter(i["label"] for i in val) == {1: 4, 0: 8}
        seen += [i["image"] for i in val]
    assert sorted(seen) == sorted(i["image"] for i in items)


def test_groups_never_straddle_train_and_validation():
    items = cases(patients=9)
    for fold in range(3):
        train, val = kfold_split(items, num_folds=3, fold=fold, group_key="patient")
        assert not {i["patient"] for i in train} & {i["patient"] for i in val}


def test_too_few_cases_per_class_is_an_error():
    with pytest.raises(ValueError, match="only 2 entries"):
        kfold_split(cases(n_pos=2), num_folds=3)
    with pytest.raises(ValueError, match="fold must be"):
        kfold_split(cases(), num_folds=3, fold=3)
