from maskgate.data.split import split_by_image


def test_split_is_by_image_deterministic_and_sized():
    images = [f"img{i}.jpg" for i in range(100)]
    a = split_by_image(images, 0.1, seed=0)
    assert a == split_by_image(list(reversed(images)), 0.1, seed=0)
    assert sum(v == "val" for v in a.values()) == 10
    assert a != split_by_image(images, 0.1, seed=1)


def test_small_sets_keep_both_sides():
    a = split_by_image(["a", "b", "c"], 0.1, seed=0)
    assert sorted(a.values()) == ["train", "train", "val"]
    assert split_by_image(["a"], 0.1, seed=0) == {"a": "train"}
